"""Schemathesis against the sidecar's own OpenAPI document: every operation, with bodies drawn
from its schema (and outside it), over the real Unix socket of a real `llmthrottle serve`. The
answers must match the document (status codes, content types, bodies) and never be a 5xx other
than 503 (overloaded); after every case the server still answers both protocols. Longer runs:
`FUZZ_EXAMPLES=2000 scripts/fuzz-sidecar`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")


from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sidecar_helpers import ServerProcess, still_serving  # noqa: E402

from llmthrottle.sidecar.openapi import openapi_spec  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
schema = schemathesis.openapi.from_dict(openapi_spec())


@pytest.fixture(scope="module")
def client(sidecar_server: ServerProcess) -> Iterator[httpx2.Client]:
    transport = httpx2.HTTPTransport(uds=sidecar_server.socket)
    with httpx2.Client(transport=transport, base_url="http://sidecar", timeout=10) as client:
        yield client


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(case: Any, sidecar_server: ServerProcess, client: httpx2.Client) -> None:
    request = case.as_transport_kwargs(base_url="http://sidecar")
    response = client.request(
        request["method"],
        request["url"],
        headers=request.get("headers"),
        params=request.get("params"),
        json=request["json"] if "json" in request else None,
        content=request.get("data"),
    )
    assert response.status_code < 500 or response.status_code == 503, response.text
    case.validate_response(
        response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance]
    )
    still_serving(sidecar_server)
