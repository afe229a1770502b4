"""Redis as it is deployed: a password or an ACL user, TLS, a replica, and a Cluster whose
masters fail over to their replicas. What cannot be used (refused credentials, an untrusted
certificate, a read-only replica, a missing ACL permission) is unavailable, decided by
`on_unavailable`, and no error or log line ever shows the password."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_servers import REDIS_SERVER, RedisCluster, RedisServer, TlsFiles, cli, make_tls_files

import llmthrottle as lt
from llmthrottle.redis_state.cells import cell_name

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (scripts/setup installs it from Debian's packages)"
)

# Unique, so that finding it in a message or a log can only mean it leaked.
SECRET = f"pw-{uuid.uuid4().hex}"


def fresh_prefix() -> str:
    return f"lt:{uuid.uuid4().hex[:12]}:"


def url_of(server: RedisServer, credentials: str = "", query: str = "") -> str:
    scheme = "rediss" if server.tls else "redis"
    return f"{scheme}://{credentials}{'@' if credentials else ''}127.0.0.1:{server.port}/0{query}"


def wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


# Who may log in: `default` with requirepass; `lt`, an ACL user with every permission; `minimal`,
# with only what the README says llmthrottle needs; `outsider`, whose keys are not llmthrottle's.
USERS = [
    "--requirepass", SECRET,
    "--user", "lt", "on", f">{SECRET}", "~*", "&*", "+@all",
    "--user", "minimal", "on", f">{SECRET}", "~lt:*", "+@scripting", "+@read", "+@write", "+@connection", "+time",
    "--user", "outsider", "on", f">{SECRET}", "~other:*", "+@all",
]  # fmt: skip


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("secured"), config=USERS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, TlsFiles]]:
    """A server that speaks TLS only, and asks for the password too."""
    directory = tmp_path_factory.mktemp("tls")
    files = make_tls_files(directory / "pki")
    try:
        server = RedisServer(directory / "redis", tls=files, config=USERS)
    except RuntimeError as error:
        if "TLS" in str(error):  # a redis-server built without TLS says so in its log
            pytest.skip(f"this redis-server cannot serve TLS: {error}")
        raise
    yield server, files
    server.stop()


# ---------------------------------------------------------------------------- AUTH


URLS = {
    "user": f"redis://lt:{SECRET}@127.0.0.1:1/0",
    "tls": f"rediss://:{SECRET}@127.0.0.1:1/0?ssl_check_hostname=false",
    "escaped": f"redis://lt:p%40{SECRET}@127.0.0.1:1/0",
}


@pytest.mark.parametrize(
    "url, cluster",
    [
        *((url, False) for url in URLS.values()),
        (f"unix:///tmp/nowhere.sock?db=0&password={SECRET}", False),
        *((url, True) for url in URLS.values()),
    ],
    ids=[*URLS, "unix-query", *(f"cluster-{name}" for name in URLS)],
)
def test_a_state_is_built_without_a_word_to_redis_and_never_shows_its_password(url: str, cluster: bool) -> None:
    state = lt.RedisState(url, prefix=fresh_prefix(), cluster=cluster, on_unavailable="fail_open")
    lim = lt.Limiter({"requests": "1/hour"}, state=state)
    assert lim.try_acquire("k") and lim.try_acquire("k")  # nothing answers: fail_open admits
    assert state.stats["outages"] == 1 and not state.ping()
    closed = lt.RedisState(url, prefix=fresh_prefix(), cluster=cluster)
    with pytest.raises(lt.RedisUnavailable) as caught:
        lt.Limiter({"requests": "1/hour"}, state=closed).try_acquire("k")
    for shown in (repr(state), repr(lim), str(caught.value)):
        assert SECRET not in shown and "***" in shown
    state.close()
    closed.close()


def test_a_password_or_an_acl_user_in_the_url_opens_redis(secured: RedisServer) -> None:
    prefix = fresh_prefix()
    by_password = lt.RedisState(url_of(secured, f":{SECRET}"), prefix=prefix)
    by_user = lt.RedisState(url_of(secured, f"lt:{SECRET}"), prefix=prefix, leases=True, lease_fraction=0.5)
    copy = pickle.loads(pickle.dumps(by_user))  # another process gets the credentials with the URL
    minimal = lt.RedisState(url_of(secured, f"minimal:{SECRET}"), prefix=prefix, holder_ttl=1)
    limits = {"requests": "5/hour", "tokens": {"rate": "1000/day", "burst": 1000}}
    one, two, three = (lt.Limiter(limits, state=state) for state in (by_password, by_user, copy))
    try:
        assert one.try_acquire("k", tokens=0) and two.try_acquire("k", tokens=0)
        assert asyncio.run(one.try_acquire_async("k", tokens=0))
        assert three.try_acquire("k", tokens=0)
        assert one.status("k")[0].used == 4  # one set of counters, whoever logged in
        # The least an ACL user needs: every kind of limit, settling, a concurrency heartbeat.
        least = lt.Limiter(
            {"requests": "5/hour", "cost_usd": {"quota": 1, "per": "day"}, "concurrency": 1}, state=minimal
        )
        held = least.try_acquire("least", cost_usd=0.5)
        assert held and not least.try_acquire("least")
        time.sleep(1.2)  # the heartbeat extends the slot past its 1 s ttl
        assert not least.try_acquire("least")
        held.commit(cost_usd=0.25)
        assert [state.used for state in least.status("least")] == [1, 0.25, 0]
        assert minimal.stats["unavailable"] == 0
        assert minimal._transport.head[0] == "FCALL"  # the README's ACL lets the function run
        leased = two.try_acquire("leased", tokens=10)  # a lease is taken and spent by the ACL user
        assert isinstance(leased, lt.redis_state.LeasedReservation)
        assert one.status("leased")[1].used >= 10
        for shown in (repr(by_password), repr(by_user), repr(one), repr(two)):
            assert SECRET not in shown and "***" in shown
    finally:
        for state in (by_password, by_user, copy, minimal):
            state.close()


@pytest.mark.parametrize(
    "credentials, query",
    [
        (":wrong-" + SECRET, ""),  # requirepass
        ("lt:wrong-" + SECRET, ""),  # an ACL user
        ("nobody:" + SECRET, ""),  # a user the server does not know
        ("", ""),  # no password at all
        ("", "?password=wrong-" + SECRET),  # redis-py reads a password from the query too
    ],
    ids=["password", "acl-user", "unknown-user", "none", "query-password"],
)
def test_refused_credentials_are_unavailable_and_never_shown(
    secured: RedisServer, credentials: str, query: str, caplog: Any
) -> None:
    url = url_of(secured, credentials, query)
    with caplog.at_level(logging.DEBUG):
        closed = lt.RedisState(url, prefix=fresh_prefix(), retry_interval=0.05)  # no I/O yet
        opened = lt.RedisState(url, prefix=fresh_prefix(), on_unavailable="fail_open", retry_interval=0.05)
        try:
            lim = lt.Limiter({"requests": "5/hour"}, state=closed)
            messages = []
            for _ in range(3):  # the first call, within retry_interval, and after it
                with pytest.raises(lt.RedisUnavailable, match="refused to authenticate") as caught:
                    lim.try_acquire("k")
                messages.append(str(caught.value))
                time.sleep(0.06)
            assert all(f"127.0.0.1:{secured.port}" in message for message in messages)
            lim.charge("k", requests=1)  # usage is kept for when the credentials work
            assert closed.pending == 1
            assert lt.Limiter({"requests": "5/hour"}, state=opened).try_acquire("k")  # fail_open admits
            shown = [*messages, repr(closed), repr(lim), caplog.text]
            assert not any(SECRET in text for text in shown)
            lines = [r.getMessage() for r in caplog.records if r.name == "llmthrottle"]
            assert sum("refused to authenticate" in line for line in lines) == 2  # one per state
        finally:
            closed.close()
            opened.close()


def test_an_acl_user_without_llmthrottles_keys_is_unavailable(secured: RedisServer) -> None:
    state = lt.RedisState(url_of(secured, f"outsider:{SECRET}"), prefix=fresh_prefix(), on_unavailable="local")
    try:
        lim = lt.Limiter({"requests": "2/hour"}, state=state)
        assert [bool(lim.try_acquire("k")) for _ in range(3)] == [True, True, False]  # decided locally
        assert state.stats["outages"] == 1 and state.stats["fallback_decisions"] == 3
        closed = lt.Limiter({"requests": "2/hour"}, state=lt.RedisState(url_of(secured, f"outsider:{SECRET}")))
        with pytest.raises(lt.RedisUnavailable, match="ACL denies"):
            closed.try_acquire("k")
        assert state._transport.head[0] == "FCALL"  # the keys were refused, not the function
        closed.state.close()
    finally:
        state.close()


# ---------------------------------------------------------------------------- TLS


def test_tls_with_the_servers_ca_decides_and_an_untrusted_server_is_unavailable(
    tls: tuple[RedisServer, TlsFiles], tmp_path: Path
) -> None:
    server, files = tls
    prefix = fresh_prefix()
    state = lt.RedisState(url_of(server, f"lt:{SECRET}"), prefix=prefix, ssl_ca_certs=str(files.ca))
    copy = pickle.loads(pickle.dumps(state))  # the TLS options travel with the URL
    try:
        lim = lt.Limiter({"requests": "5/hour"}, state=state)
        assert lim.try_acquire("k") and asyncio.run(lim.try_acquire_async("k"))
        assert lt.Limiter({"requests": "5/hour"}, state=copy).try_acquire("k")
        assert lim.status("k")[0].used == 3
    finally:
        state.close()
        copy.close()
    other = make_tls_files(tmp_path / "other")  # a CA that did not sign the server's certificate
    for untrusted in (
        lt.RedisState(url_of(server, f"lt:{SECRET}"), prefix=prefix, ssl_ca_certs=str(other.ca)),
        lt.RedisState(url_of(server, f"lt:{SECRET}"), prefix=prefix),  # the system's CAs
    ):
        with pytest.raises(lt.RedisUnavailable, match="TLS certificate is not trusted") as caught:
            lt.Limiter({"requests": "5/hour"}, state=untrusted).try_acquire("k")
        assert SECRET not in str(caught.value)
        untrusted.close()
    plain = lt.RedisState(f"redis://lt:{SECRET}@127.0.0.1:{server.port}/0", prefix=prefix)  # no TLS
    with pytest.raises(lt.RedisUnavailable):
        lt.Limiter({"requests": "5/hour"}, state=plain).try_acquire("k")
    plain.close()
    with pytest.raises(lt.ConfigError, match="ssl_ca_certs"):
        lt.RedisState(url_of(server), ssl_ca_certs=str(tmp_path / "missing.pem"))


def test_sidecars_reach_redis_over_tls_as_an_acl_user_and_never_log_the_password(
    tls: tuple[RedisServer, TlsFiles], tmp_path: Path
) -> None:
    from sidecar_helpers import start_server

    server, files = tls
    prefix = fresh_prefix()

    def config(credentials: str) -> str:
        return (
            f'[state]\nkind = "redis"\nurl = "{url_of(server, credentials)}"\nprefix = "{prefix}"\n'
            f'ssl_ca_certs = "{files.ca}"\n[limits."*"]\nrequests = "3/hour"\n'
        )

    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    good = start_server(str(tmp_path / "good"), config(f"lt:{SECRET}"))
    bad = start_server(str(tmp_path / "bad"), config(f"lt:wrong-{SECRET}"))
    try:
        clients = [lt.Sidecar(good.socket), lt.Sidecar(bad.socket)]
        right, wrong = (lt.Limiter(None, state=client) for client in clients)
        assert [bool(right.try_acquire("tenant")) for _ in range(4)] == [True, True, True, False]
        with pytest.raises(lt.StateError, match="refused to authenticate") as caught:
            wrong.try_acquire("tenant")
        assert SECRET not in str(caught.value)
        for client in clients:
            client.close()
    finally:
        good.stop()
        bad.stop()
    assert "refused to authenticate" in bad.log()
    assert SECRET not in good.log() and SECRET not in bad.log()


# ---------------------------------------------------------------------------- replicas


def _replication_offset(info: str, field: str) -> int:
    """`field` of a server's INFO replication (`info`), an offset in bytes. WAIT cannot stand in
    for it: on a connection of its own, which wrote nothing, it does not wait."""
    for line in info.splitlines():
        name, _, value = line.strip().partition(":")
        if name == field:
            return int(value)
    raise AssertionError(f"no {field} in INFO replication")


def test_a_replica_is_unavailable_by_the_policy_until_it_is_promoted(tmp_path: Path, caplog: Any) -> None:
    """A standalone replica (`replicaof`) answers pings and reads, and refuses the script's
    writes: every decision there is unavailable (one log line, not one per retry), until the
    replica is promoted; it then decides on the counters the primary had replicated, and what
    was settled meanwhile is replayed. The replica refuses the function (FCALL) before it runs:
    the calls go there as EVALSHA, and FCALL again once it is promoted."""
    primary = RedisServer(tmp_path / "primary")
    replica = RedisServer(tmp_path / "replica", config=["--replicaof", "127.0.0.1", str(primary.port)])
    prefix = fresh_prefix()
    limits = {"requests": "10/hour"}
    on_primary = lt.RedisState(primary.url, prefix=prefix)
    states = [
        lt.RedisState(replica.url, prefix=prefix, retry_interval=0.05, on_unavailable=mode)
        for mode in ("fail_closed", "fail_open", "local")
    ]
    closed, opened, local = (lt.Limiter(limits, state=state) for state in states)
    try:
        wait_for(lambda: "master_link_status:up" in cli(replica.port, "info", "replication"), "the replica is linked")
        assert all(lt.Limiter(limits, state=on_primary).try_acquire("k") for _ in range(3))
        written = _replication_offset(cli(primary.port, "info", "replication"), "master_repl_offset")
        wait_for(
            lambda: _replication_offset(cli(replica.port, "info", "replication"), "slave_repl_offset") >= written,
            "the replica has the 3",
        )
        assert closed.status("k")[0].used == 3  # reads are served by the replica
        with caplog.at_level(logging.WARNING, logger="llmthrottle"):
            for _ in range(4):  # across several retry intervals
                with pytest.raises(lt.RedisUnavailable, match="read-only replica"):
                    closed.try_acquire("k")
                assert opened.try_acquire("k") and local.try_acquire("k")
                time.sleep(0.06)
            closed.charge("k", requests=2)  # kept while the replica refuses writes
            assert states[0].pending == 1
            lines = [r.getMessage() for r in caplog.records]
            assert sum("read-only replica" in line for line in lines) == 3  # one per state
            assert not any("reachable again" in line for line in lines)
            cli(replica.port, "replicaof", "no", "one")  # promoted, as Sentinel would
            time.sleep(0.06)
            fcalls_before = fcall_count(replica.port)
            assert closed.try_acquire("k")
            assert fcall_count(replica.port) > fcalls_before  # the fast path again on the primary
            assert closed.status("k")[0].used == 3 + 2 + 1  # replicated, replayed, decided
            assert states[0].pending == 0
            assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1
    finally:
        for state in (on_primary, *states):
            state.close()
        replica.stop()
        primary.stop()


def fcall_count(port: int) -> int:
    """How many FCALLs the server on `port` ran (refused ones not counted)."""
    for line in cli(port, "info", "commandstats").splitlines():
        if line.startswith("cmdstat_fcall:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


@pytest.mark.slow
def test_a_cluster_failover_keeps_the_counts(tmp_path: Path, caplog: Any) -> None:
    """A Cluster with a replica per master, behind a password. A graceful failover (CLUSTER
    FAILOVER) is seamless: no call refused, no count lost. After a master is killed, its slots
    are unavailable until its replica is promoted (the whole cluster answers CLUSTERDOWN
    meanwhile, as Redis does with cluster-require-full-coverage); then every key decides again
    on the counters replicated before the crash, and usage settled during the outage is
    replayed there, once."""
    cluster = RedisCluster(tmp_path, replicas=1, password=SECRET)
    any_node = f"127.0.0.1:{cluster.nodes[0].port}/0"
    # Built without a word to Redis; refused at the first call, like a standalone server.
    refused = lt.RedisState(f"redis://:wrong-{SECRET}@{any_node}", prefix=fresh_prefix(), cluster=True)
    with pytest.raises(lt.RedisUnavailable, match="refused to authenticate") as caught:
        lt.Limiter({"requests": "5/hour"}, state=refused).try_acquire("k")
    assert SECRET not in str(caught.value) and not refused.ping()
    refused.close()
    url = f"redis://:{SECRET}@{any_node}"
    state = lt.RedisState(url, prefix=fresh_prefix(), cluster=True, timeout=0.5, retry_interval=0.1)
    # A burst of 1000 that drains one unit in 2.4 hours: what is counted stays put during the test.
    lim = lt.Limiter({"requests": {"rate": "10/day", "burst": 1000}}, state=state)
    keys = [f"k{i}" for i in range(24)]
    admitted: Counter[str] = Counter()

    def decide_all() -> int:
        """One call per key; how many Redis could not take."""
        refused = 0
        for key in keys:
            try:
                if lim.try_acquire(key):
                    admitted[key] += 1
            except lt.RedisUnavailable:
                refused += 1
        return refused

    def counted() -> dict[str, int]:
        return {key: int(lim.status(key)[0].used) for key in keys}

    def master_of(key: str) -> RedisServer:
        cell = cell_name(state.prefix, key, "any limit")  # a key's cells share one slot
        return cluster.node(state.client.get_node_from_key(cell).port)

    try:
        assert decide_all() == 0 and decide_all() == 0
        # A graceful failover: the replica catches up, then takes over its master's slots.
        old = master_of(keys[0])
        promoted = cluster.replica_of(old)
        cluster.failover(promoted)
        assert decide_all() == 0  # not one call refused
        assert counted() == dict(admitted)
        # A crash: the new master is killed; the old one, its replica now, is promoted.
        doomed = [key for key in keys if master_of(key) is promoted]
        assert doomed
        reservation = lim.try_acquire(doomed[0])
        admitted[doomed[0]] += 1
        written = _replication_offset(cluster.cli(promoted, "info", "replication"), "master_repl_offset")
        wait_for(
            lambda: _replication_offset(cluster.cli(old, "info", "replication"), "slave_repl_offset") >= written,
            "its replica has it all",
        )
        with caplog.at_level(logging.WARNING, logger="llmthrottle"):
            promoted.kill()
            reservation.commit(requests=3)  # 2 more than reserved, while its node is down
            assert state.pending == 1
            deadline = time.monotonic() + 60
            while decide_all():  # refused until the replica is promoted
                assert time.monotonic() < deadline, "the cluster never failed over"
                time.sleep(0.1)
        assert cluster.cli(old, "role").startswith("master")
        assert state.pending == 0  # replayed on the promoted replica
        admitted[doomed[0]] += 2
        assert counted() == dict(admitted)  # nothing acknowledged before the crash was lost
        lines = [r.getMessage() for r in caplog.records]
        assert sum(f"node 127.0.0.1:{promoted.port} unavailable" in line for line in lines) == 1
        assert sum(f"node 127.0.0.1:{promoted.port} serves no slot" in line for line in lines) == 1
        assert not state._outages  # every outage has ended
    finally:
        state.close()
        cluster.stop()
