"""Fixtures shared by the test modules: real Redis servers, started once per session; a ledger
of its own and the SDK clients a test opened, per test."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_servers import REDIS_SERVER, RedisCluster, RedisServer

import llmthrottle as lt


def _need_redis() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (scripts/setup installs it from Debian's packages)")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A durable redis-server of the test's own, to kill and restart."""
    _need_redis()
    server = RedisServer(tmp_path / "redis", durable=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A standalone redis-server for the whole session (tests isolate themselves by prefix)."""
    _need_redis()
    with tempfile.TemporaryDirectory(prefix="lt-redis-") as directory:
        server = RedisServer(Path(directory))
        yield server
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster for the whole session."""
    _need_redis()
    with tempfile.TemporaryDirectory(prefix="lt-cluster-") as directory:
        cluster = RedisCluster(Path(directory))
        yield cluster
        cluster.stop()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Any]:
    """A ledger of its own for a test."""
    with lt.Ledger(tmp_path / "ledger") as ledger:
        yield ledger


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Clients a test made, closed after it (they hold sockets)."""
    clients: list[Any] = []
    yield clients
    for client in clients:
        client.close()
