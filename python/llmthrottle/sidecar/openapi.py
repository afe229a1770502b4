"""The OpenAPI 3.1 description of the sidecar's HTTP API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_spec"]

_KEY = {
    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    "description": "A key, or several keys admitted all-or-nothing.",
}
_AMOUNTS = {
    "type": "object",
    "additionalProperties": {"type": "number", "minimum": 0},
    "description": 'Amount per dimension, e.g. {"tokens": 1200}; requests defaults to 1.',
}
_NAMESPACE = {"type": "string", "default": "default"}
_DECISION = {
    "type": "object",
    "properties": {
        "allowed": {"type": "boolean"},
        "retry_after": {"type": "number", "description": "Seconds until the same request would be admitted."},
        "delay": {"type": "number", "description": "Seconds to wait before the call (admissions with max_wait)."},
        "reset_after": {"type": "number"},
        "limited_by": {"type": ["string", "null"]},
        "limited_key": {"type": ["string", "null"]},
        "remaining": {"type": "object", "additionalProperties": {"type": "number"}},
        "reservation_id": {
            "type": ["string", "null"],
            "description": "Commit or cancel it (admitted only): 32 hex digits, 128 bits no other peer can guess.",
        },
        "reserved": {"type": ["object", "null"], "additionalProperties": {"type": "number"}},
    },
}
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "properties": properties, "required": required}}},
    }


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    str(code): _answer(text, _ERROR)
    for code, text in (
        (400, "Bad input"),
        (403, "This uid may not use the key ([access])"),
        (404, "Unknown namespace or reservation"),
        (422, "The request can never fit the limit"),
        (503, "Overloaded"),
    )
}
_OK = _answer("Done", {"type": "object", "properties": {"ok": {"type": "boolean"}}})


def openapi_spec() -> dict[str, Any]:
    """The API description (a fresh dict each call)."""
    reservation = {"reservation_id": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llmthrottle sidecar",
            "version": "1",
            "description": "Rate limits, token budgets and concurrency for LLM calls, decided by "
            "one process per host. Served on a Unix socket.",
        },
        "paths": {
            "/v1/acquire": {
                "post": {
                    "summary": "Decide now whether a call may go ahead; reserve its amounts if so.",
                    "requestBody": _body(
                        {
                            "namespace": _NAMESPACE,
                            "key": _KEY,
                            "amounts": _AMOUNTS,
                            "max_wait": {"type": "number", "default": 0},
                        },
                        ["key"],
                    ),
                    "responses": {
                        "200": _answer("Admitted", _DECISION),
                        "429": _answer("Denied; see Retry-After", _DECISION),
                        **_ERRORS,
                    },
                }
            },
            "/v1/peek": {
                "post": {
                    "summary": "What acquire would decide, without charging anything.",
                    "requestBody": _body({"namespace": _NAMESPACE, "key": _KEY, "amounts": _AMOUNTS}, ["key"]),
                    "responses": {"200": _answer("Decision", _DECISION), **_ERRORS},
                }
            },
            "/v1/commit": {
                "post": {
                    "summary": "Reconcile a reservation with real usage (less is refunded, more charged).",
                    "requestBody": _body(
                        {
                            **reservation,
                            "usage": {
                                "type": "object",
                                "description": "Dimension amounts, plus optional ledger fields: model, "
                                "provider, tenant, user, team, feature, cost_micros, input_tokens, output_tokens.",
                            },
                        },
                        ["reservation_id"],
                    ),
                    "responses": {"200": _OK, **_ERRORS},
                }
            },
            "/v1/cancel": {
                "post": {
                    "summary": "The call never happened: refund the reservation.",
                    "requestBody": _body(reservation, ["reservation_id"]),
                    "responses": {"200": _OK, **_ERRORS},
                }
            },
            "/v1/status": {
                "get": {
                    "summary": "A key's state under each limit that applies to it.",
                    "parameters": [
                        {"name": "key", "in": "query", "required": True, "schema": {"type": "string"}},
                        {"name": "namespace", "in": "query", "schema": _NAMESPACE},
                    ],
                    "responses": {"200": _answer("Limits", {"type": "object"}), **_ERRORS},
                }
            },
            "/v1/register": {
                "post": {
                    "summary": "Define a namespace's limits (ignored for namespaces the policy file defines).",
                    "requestBody": _body(
                        {"namespace": _NAMESPACE, "limits": {"type": "object"}, "rules": {"type": "object"}},
                        ["namespace"],
                    ),
                    "responses": {"200": _answer("The namespace's rules", {"type": "object"}), **_ERRORS},
                }
            },
            "/v1/reload": {
                "post": {
                    "summary": "Re-read the policy file; counters carry over.",
                    "responses": {"200": _answer("Reloaded", {"type": "object"}), **_ERRORS},
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness and a summary.",
                    "responses": {"200": _answer("Healthy", {"type": "object"})},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition.",
                    "responses": {
                        "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
                    },
                }
            },
        },
    }
