"""Fixtures shared by the test modules: real Redis servers, started once per session."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_servers import REDIS_SERVER, RedisCluster, RedisServer


def _need_redis() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (scripts/setup installs it from Debian's packages)")


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
