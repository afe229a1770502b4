"""Fixtures of the sidecar's tests: a server per module on the test policy, a scratch directory."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest
from sidecar_helpers import TEST_CONFIG, ServerProcess, start_server


@pytest.fixture(scope="module")
def sidecar_server() -> Iterator[ServerProcess]:
    """One server per test module, on TEST_CONFIG."""
    with tempfile.TemporaryDirectory(prefix="lt-sidecar-") as directory:
        server = start_server(directory, TEST_CONFIG)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def directory() -> Iterator[str]:
    """A scratch directory for a server's socket, policy file and ledger."""
    with tempfile.TemporaryDirectory(prefix="lt-sidecar-") as path:
        yield path
