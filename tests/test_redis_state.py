"""What only Redis adds: hosts that share nothing but the server, Cluster slots, holders that
lapse with their process, the server's own clock, and what a decision does while Redis is down.
(The Limiter behaviour suite in test_limiter.py runs on Redis too.)"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_servers import RedisServer

import llmthrottle as lt
from llmthrottle.redis_state.cells import cell_name, group_by_slot
from llmthrottle.testing import FakeClock


def fresh_prefix() -> str:
    return f"r{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def state(redis_server: RedisServer) -> Iterator[lt.RedisState]:
    state = lt.RedisState(redis_server.url, prefix=fresh_prefix())
    yield state
    state.close()


def cells_of(limiter: Any, key: str, **amounts: Any) -> list[str]:
    plans = limiter._planner._plan(key, **amounts)
    return [cell_name(limiter.state.prefix, key, plan[1]) for plan in plans]


# ---------------------------------------------------------------------------- hosts


def _hammer(url: str, prefix: str, start: Any, seconds: float, results: Any, leases: bool) -> None:
    options = {"leases": True, "lease_fraction": 0.1, "lease_ttl": 0.5} if leases else {}
    state = lt.RedisState(url, prefix=prefix, **options)
    limiter = lt.Limiter({"requests": {"rate": "1000/s", "burst": 100}}, state=state)
    start.wait()
    first = time.time()
    admitted = attempts = 0
    while time.time() - first < seconds:
        attempts += 1
        if limiter.try_acquire("fleet"):
            admitted += 1
    results.put((admitted, attempts, first, time.time()))
    state.close()


def run_fleet(url: str, *, leases: bool, processes: int = 4, seconds: float = 3.0) -> tuple[int, int, float, float]:
    """Processes that share nothing but the server, each on its own RedisState, hammering one
    limit of 1000/s with a burst of 100: (admitted, attempts, whole window, shortest run)."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    prefix = fresh_prefix()
    workers = [
        context.Process(target=_hammer, args=(url, prefix, start, seconds, results, leases)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # every worker connected and waiting
    start.set()
    reports = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    window = max(report[3] for report in reports) - min(report[2] for report in reports)
    shortest = min(report[3] - report[2] for report in reports)
    return sum(r[0] for r in reports), sum(r[1] for r in reports), window, shortest


@pytest.mark.slow
def test_processes_sharing_only_redis_admit_exactly_the_limit(redis_server: RedisServer) -> None:
    """Four processes, nothing shared but the server: over the run at most burst + rate * T
    is admitted, and at least 99% of it."""
    admitted, attempts, window, shortest = run_fleet(redis_server.url, leases=False)
    assert admitted <= 100 + 1000 * window + 1
    assert admitted >= 0.99 * (100 + 1000 * shortest)
    assert attempts > 2 * admitted  # the limit, not the workers, decided


# ---------------------------------------------------------------------------- cluster


def test_keys_sharing_a_hash_tag_are_one_script_and_others_are_spread(redis_cluster: Any) -> None:
    state = lt.RedisState(redis_cluster.url, prefix=fresh_prefix(), cluster=True)
    try:
        lim = lt.Limiter(rules={"*:user:*": {"tokens": "1000/min"}, "*:team:*": {"tokens": "1500/min"}}, state=state)
        tagged = cells_of(lim, "{acme}:user:1", tokens=1) + cells_of(lim, "{acme}:team:x", tokens=1)
        assert len(group_by_slot(tagged, str, cluster=True)) == 1
        spread = [cell for i in range(20) for cell in cells_of(lim, f"t{i}:user:{i}", tokens=1)]
        assert len(group_by_slot(spread, str, cluster=True)) > 1
        # Across slots, a denial by a later slot gives back what the earlier ones charged.
        keys = ["a:user:1", "b:team:x"]
        assert lim.try_acquire(["c:user:2", "b:team:x"], tokens=1000)
        denied = lim.try_acquire(keys, tokens=600)
        assert not denied and denied.limited_key == "b:team:x"
        assert lim.status("a:user:1")[0].used == 0
        assert lim.try_acquire(keys, tokens=500)
    finally:
        state.close()


# ---------------------------------------------------------------------------- scripts, cells, clock


def test_a_flushed_function_library_is_loaded_again(state: lt.RedisState) -> None:
    """Decisions are FCALLs of llmthrottle's library (Redis 7): a server that lost it (FUNCTION
    FLUSH, or a restart without persistence) gets it again, from sync and async calls alike."""
    import asyncio

    from llmthrottle.redis_state.script import LIBRARY_NAME

    lim = lt.Limiter({"requests": "5/min"}, state=state)
    assert lim.try_acquire("k")
    assert state.client.function_list(LIBRARY_NAME)
    calls_before = state.client.info("commandstats")["cmdstat_fcall"]["calls"]
    state.client.function_flush()
    assert lim.try_acquire("k")
    state.client.function_flush()
    assert asyncio.run(lim.try_acquire_async("k"))
    assert lim.status("k")[0].used == 3
    assert state.client.info("commandstats")["cmdstat_fcall"]["calls"] > calls_before
    assert state.client.function_list(LIBRARY_NAME)


@pytest.mark.parametrize("refused_by", ["acl", "server"])
def test_without_functions_the_script_is_used_and_loaded_again(
    redis_server: RedisServer, tmp_path: Path, refused_by: str
) -> None:
    """A user whose ACL refuses FUNCTION and FCALL, or a server without them (Redis 6; here a
    Redis 7 whose FCALL is renamed away), gets EVALSHA of the same code, loaded again after
    SCRIPT FLUSH."""
    import asyncio

    import redis

    server = redis_server
    if refused_by == "server":
        server = RedisServer(tmp_path / "redis", config=("--rename-command", "FCALL", ""))
    admin = redis.Redis.from_url(server.url)
    url = server.url
    if refused_by == "acl":
        user = f"u{uuid.uuid4().hex[:8]}"
        admin.acl_setuser(
            user,
            enabled=True,
            passwords=["+secret"],
            keys=["*"],
            categories=["+@all"],
            commands=["-function", "-fcall"],
        )
        url = f"redis://{user}:secret@127.0.0.1:{server.port}/0"
    state = lt.RedisState(url, prefix=fresh_prefix())
    evalsha_before = admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    try:
        lim = lt.Limiter({"requests": "5/min"}, state=state)
        assert lim.try_acquire("k")
        admin.script_flush()
        assert lim.try_acquire("k")
        admin.script_flush()
        assert asyncio.run(lim.try_acquire_async("k"))
        assert lim.status("k")[0].used == 3
        assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] - evalsha_before >= 4
    finally:
        state.close()
        if refused_by == "acl":
            admin.acl_deluser(user)
        else:
            server.stop()


def test_a_damaged_cell_is_a_state_error_and_touches_nothing_else(state: lt.RedisState) -> None:
    lim = lt.Limiter({"requests": "5/min", "tokens": "1k/min"}, state=state)
    assert lim.try_acquire("k", tokens=10)
    requests_cell, tokens_cell = cells_of(lim, "k", tokens=10)
    state.client.set(tokens_cell, b"\xff garbage")
    with pytest.raises(lt.StateError, match="did not write"):
        lim.try_acquire("k", tokens=10)
    assert lim.status("other")[0].used == 0 and lim.try_acquire("other")
    state.client.delete(tokens_cell)
    # The failed decision charged nothing: the requests cell still holds one call.
    assert [s.used for s in lim.status("k")] == [1, 0]
    state.client.delete(requests_cell)
    state.client.lpush(requests_cell, "x")  # a key of another type
    with pytest.raises(lt.StateError, match="WRONGTYPE"):
        lim.try_acquire("k")


def test_decisions_use_the_servers_clock(state: lt.RedisState) -> None:
    lim = lt.Limiter({"requests": "1/min"}, state=state)
    assert lim.try_acquire("k")
    denied = lim.try_acquire("k")
    assert 59.0 < denied.retry_after <= 60.0
    seconds, micros = state.client.time()
    assert abs(seconds + micros / 1e6 - time.time()) < 5  # the same host: the clocks agree


def test_prefixes_keep_apart_what_they_count(redis_server: RedisServer) -> None:
    one, two = (lt.RedisState(redis_server.url, prefix=fresh_prefix()) for _ in range(2))
    try:
        a = lt.Limiter({"requests": "1/min"}, state=one)
        b = lt.Limiter({"requests": "1/min"}, state=two)
        assert a.try_acquire("k") and b.try_acquire("k")
        assert not a.try_acquire("k")
    finally:
        one.close()
        two.close()


def test_bad_configuration_is_refused_clearly(redis_server: RedisServer) -> None:
    with pytest.raises(lt.ConfigError, match="braces"):
        lt.RedisState(redis_server.url, prefix="{all}:")
    with pytest.raises(lt.ConfigError, match="on_unavailable"):
        lt.RedisState(redis_server.url, on_unavailable="maybe")
    with pytest.raises(lt.ConfigError, match="timeout"):
        lt.RedisState(redis_server.url, timeout=float("nan"))
    with pytest.raises(lt.ConfigError, match="local_fraction"):
        lt.RedisState(redis_server.url, local_fraction=0)
    with pytest.raises(lt.ConfigError, match="URL or a redis client"):
        lt.RedisState(42)


def test_bad_requests_fail_before_reaching_redis(state: lt.RedisState) -> None:
    lim = lt.Limiter({"tokens": "1k/min"}, state=state)
    for bad in (-1, float("nan"), float("inf"), 2**70):
        with pytest.raises((ValueError, TypeError, OverflowError)):
            lim.try_acquire("k", tokens=bad)
    with pytest.raises(ValueError, match="empty"):
        lim.try_acquire("", tokens=1)
    with pytest.raises(ValueError, match="255"):
        lim.try_acquire("k" * 300, tokens=1)
    with pytest.raises(lt.ExceedsCapacity):
        lim.try_acquire("k", tokens=5000)
    assert state.client.dbsize() == 0 or not any(
        key.startswith(state.prefix.encode()) for key in state.client.scan_iter(f"{state.prefix}*")
    )


# ---------------------------------------------------------------------------- concurrency holders


def _hold_a_slot(url: str, prefix: str) -> None:
    state = lt.RedisState(url, prefix=prefix, holder_ttl=3.0)
    lim = lt.Limiter({"concurrency": 1}, state=state)
    held = lim.try_acquire("k")
    assert held
    print("held", flush=True)
    time.sleep(600)


def test_a_dead_processs_slots_lapse_and_a_live_ones_are_kept(redis_server: RedisServer) -> None:
    prefix = fresh_prefix()
    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_redis_state import _hold_a_slot; "
        f"_hold_a_slot({redis_server.url!r}, {prefix!r})"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"held"
        state = lt.RedisState(redis_server.url, prefix=prefix, holder_ttl=3.0)
        lim = lt.Limiter({"concurrency": 1}, state=state)
        time.sleep(4.0)  # longer than the ttl: the child's heartbeat keeps its slot
        assert not lim.try_acquire("k")
        child.send_signal(signal.SIGKILL)
        child.communicate()
        deadline = time.monotonic() + 20
        while not lim.try_acquire("k"):
            assert time.monotonic() < deadline, "the dead holder's slot never lapsed"
            time.sleep(0.1)
        state.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def test_a_dropped_reservation_gives_its_slot_back_with_the_next_call(state: lt.RedisState) -> None:
    lim = lt.Limiter({"concurrency": 1}, state=state)
    held = lim.try_acquire("k")
    assert held and not lim.try_acquire("k")
    del held
    assert lim.try_acquire("k")


# ---------------------------------------------------------------------------- Redis down


def test_fail_closed_refuses_and_usage_committed_meanwhile_is_replayed_once(
    own_server: RedisServer, caplog: Any
) -> None:
    state = lt.RedisState(own_server.url, prefix=fresh_prefix(), retry_interval=0.05, timeout=0.5)
    lim = lt.Limiter({"tokens": {"quota": 100_000, "per": "day"}}, state=state)
    try:
        reservation = lim.try_acquire("k", tokens=1000)
        lim.try_acquire("k", tokens=500).commit(tokens=200)
        own_server.kill()
        with caplog.at_level(logging.WARNING, logger="llmthrottle"):
            with pytest.raises(lt.RedisUnavailable, match="fail_closed"):
                lim.try_acquire("k", tokens=1)
            reservation.commit(tokens=4000)  # kept: Redis is down
            lim.charge("k", tokens=300)
            assert state.pending == 2
            time.sleep(0.1)
            own_server.start()  # the append-only file brings back what was answered
            time.sleep(0.1)
            assert lim.status("k")[0].used == 1200 + 3000 + 300  # the replay ran first
            assert state.pending == 0 and state.stats["replayed"] == 2
        messages = [r.getMessage() for r in caplog.records]
        assert sum("unavailable" in m for m in messages) == 1
        assert sum("reachable again" in m for m in messages) == 1
    finally:
        state.close()


def test_a_replayed_settlement_is_applied_at_most_once(own_server: RedisServer) -> None:
    state = lt.RedisState(own_server.url, prefix=fresh_prefix(), retry_interval=0.05)
    lim = lt.Limiter({"tokens": {"quota": 100_000, "per": "day"}}, state=state)
    try:
        own_server.kill()
        lim.charge("k", tokens=700)
        call = state._queue.items[0][1]
        own_server.start()
        time.sleep(0.1)
        assert state.replay() == 1
        state.run(call)  # the same operation again, as after a reply lost on the way back
        assert lim.status("k")[0].used == 700
    finally:
        state.close()


def test_fail_open_admits_without_counting(own_server: RedisServer) -> None:
    state = lt.RedisState(own_server.url, prefix=fresh_prefix(), on_unavailable="fail_open", retry_interval=0.05)
    lim = lt.Limiter({"requests": "1/hour"}, state=state)
    try:
        assert lim.try_acquire("k")
        own_server.kill()
        for _ in range(5):
            with lim.acquire("k", timeout=0) as admitted:
                assert admitted
        assert state.stats["fallback_decisions"] == 5
        own_server.start()
        time.sleep(0.1)
        assert not lim.try_acquire("k")  # what Redis counted before the outage still holds
    finally:
        state.close()


def test_local_fallback_decides_at_this_hosts_share(own_server: RedisServer) -> None:
    state = lt.RedisState(own_server.url, prefix=fresh_prefix(), on_unavailable="local", local_fraction=0.25)
    lim = lt.Limiter({"requests": "40/hour", "concurrency": 8}, state=state)
    try:
        own_server.kill()
        admitted = [lim.try_acquire("k") for _ in range(20)]
        assert sum(map(bool, admitted)) == 2  # a quarter of the concurrency cap (8) is 2 in flight
        for reservation in admitted:
            if reservation:
                reservation.commit()
        assert sum(bool(lim.try_acquire("k")) for _ in range(20)) == 8  # 10 of 40/hour in all
    finally:
        state.close()


def test_a_decision_waits_no_longer_than_the_timeout(own_server: RedisServer) -> None:
    state = lt.RedisState(own_server.url, prefix=fresh_prefix(), timeout=0.2)
    lim = lt.Limiter({"requests": "10/s"}, state=state)
    try:
        assert lim.try_acquire("k")
        assert own_server.process is not None
        own_server.process.send_signal(signal.SIGSTOP)  # alive but silent
        try:
            started = time.monotonic()
            with pytest.raises(lt.RedisUnavailable):
                lim.try_acquire("k")
            assert time.monotonic() - started < 2.0  # bounded by the timeout, not by the server
        finally:
            own_server.process.send_signal(signal.SIGCONT)
    finally:
        state.close()


def test_async_decisions(state: lt.RedisState) -> None:
    import asyncio

    lim = lt.Limiter({"requests": "3/min", "concurrency": 2}, state=state)

    async def main() -> list[bool]:
        decisions = await asyncio.gather(*(lim.try_acquire_async("k") for _ in range(4)))
        for decision in decisions:
            if decision:
                await decision.cancel_async()
        async with lim.acquire_async("k", timeout=1) as reservation:
            assert reservation
        return [bool(d) for d in decisions]

    assert sorted(asyncio.run(main())) == [False, False, True, True]


def test_a_state_travels_to_another_process_by_url(state: lt.RedisState) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(state))
    try:
        assert copy.prefix == state.prefix and copy is not state
        lim = lt.Limiter({"requests": "1/min"}, state=copy)
        assert lim.try_acquire("k")
        assert not lt.Limiter({"requests": "1/min"}, state=state).try_acquire("k")
    finally:
        copy.close()


# ---------------------------------------------------------------------------- the sidecar on Redis


def test_sidecars_on_two_hosts_share_one_set_of_limits(redis_server: RedisServer, tmp_path: Path) -> None:
    from sidecar_helpers import start_server

    config = (
        f'[state]\nkind = "redis"\nurl = "{redis_server.url}"\nprefix = "{fresh_prefix()}"\n'
        '[limits."*"]\nrequests = "10/hour"\n'
    )
    servers = []
    try:
        for host in ("a", "b"):
            (tmp_path / host).mkdir()
            servers.append(start_server(str(tmp_path / host), config))
        sidecars = [lt.Sidecar(server.socket) for server in servers]
        limiters = [lt.Limiter(None, state=sidecar) for sidecar in sidecars]
        admitted = [bool(limiters[i % 2].try_acquire("tenant:acme")) for i in range(16)]
        assert sum(admitted) == 10  # not 10 per host
        assert limiters[0].status("tenant:acme")[0].used == 10
        for sidecar in sidecars:
            sidecar.close()
    finally:
        for server in servers:
            server.stop()


def test_a_sidecar_on_a_silent_redis_keeps_answering_everything_else(own_server: RedisServer, tmp_path: Path) -> None:
    import socket as socket_module

    from sidecar_helpers import RawClient, start_server

    from llmthrottle.sidecar.protocol import OK, Op

    config = (
        f'[state]\nkind = "redis"\nurl = "{own_server.url}"\nprefix = "{fresh_prefix()}"\ntimeout = 5\n'
        '[limits."*"]\nrequests = "100/s"\n'
    )
    server = start_server(str(tmp_path), config)
    deciding, other = RawClient(server.socket), RawClient(server.socket)
    try:
        assert deciding.call([1, Op.ACQUIRE, "default", "k", {}, 0.0])[1] == OK  # Redis answers
        assert own_server.process is not None
        own_server.process.send_signal(signal.SIGSTOP)  # alive but silent
        try:
            deciding.send([[2, Op.ACQUIRE, "default", "k", {}, 0.0]])  # waits on Redis...
            # ...while the event loop answers other connections: a ping, health, metrics.
            assert other.call([7, Op.PING]) == [7, OK, None]
            assert server.http("GET", "/health")[0] == 200
            assert server.http("GET", "/metrics")[0] == 200
            deciding.sock.settimeout(0.2)
            with pytest.raises(socket_module.timeout):
                deciding.read_frame()  # the decision is still waiting on Redis
        finally:
            own_server.process.send_signal(signal.SIGCONT)
        deciding.sock.settimeout(30)
        [answer] = deciding.read_frame()
        assert answer[0] == 2  # answered once Redis spoke again (or with StateError at the timeout)
        assert other.call([8, Op.ACQUIRE, "default", "k", {}, 0.0])[1] == OK
    finally:
        deciding.close()
        other.close()
        server.stop()


def test_the_policy_files_redis_settings_are_checked(tmp_path: Path) -> None:
    from llmthrottle.sidecar.config import load_config

    def load(text: str) -> Any:
        path = tmp_path / "llmthrottle.toml"
        path.write_text(text)
        return load_config(str(path))

    config = load('[state]\nkind = "redis"\nurl = "redis://cache:6379/0"\ntimeout = 1\ncluster = true\n')
    assert config.state_url == "redis://cache:6379/0"
    assert config.state_redis_options == {"timeout": 1.0, "cluster": True}
    with pytest.raises(lt.ConfigError, match="needs the server's url"):
        load('[state]\nkind = "redis"\n')
    with pytest.raises(lt.ConfigError, match='needs kind = "redis"'):
        load('[state]\nkind = "shared"\nurl = "redis://cache"\n')
    with pytest.raises(lt.ConfigError, match="must be a bool"):
        load('[state]\nkind = "redis"\nurl = "redis://x"\ncluster = "yes"\n')
    with pytest.raises(lt.ConfigError, match="state.tiemout"):
        load('[state]\nkind = "redis"\nurl = "redis://x"\ntiemout = 1\n')


# ---------------------------------------------------------------------------- leases


def test_leases_decide_locally_and_give_back_what_they_did_not_use(redis_server: RedisServer) -> None:
    prefix = fresh_prefix()
    limits = {"tokens": {"rate": "1000/day", "burst": 1000}}  # drains 0.01 tokens/s: counts stay put
    state = lt.RedisState(redis_server.url, prefix=prefix, leases=True, lease_fraction=0.5)
    observer = lt.Limiter(limits, state=lt.RedisState(redis_server.url, prefix=prefix))
    lim = lt.Limiter(limits, state=state)
    used = 0
    for amount in (100, 100, 100, 100, 100, 50):
        reservation = lim.try_acquire("k", tokens=amount)
        assert reservation and reservation.reserved == {"tokens": amount}
        reservation.commit(tokens=amount // 2)
        used += amount // 2
    assert state.leases is not None
    assert state.leases.local_decisions == 6 and state.leases.stats["slices_taken"] < 6
    with lim.acquire("k", tokens=10):
        pass  # committed as reserved
    used += 10
    lim.try_acquire("k", tokens=30).commit(tokens=90)  # above the reservation: charged in Redis
    used += 90
    cancelled = lim.try_acquire("k", tokens=40)
    cancelled.cancel()
    held = observer.status("k")[0].used
    assert held >= used  # the slices this process holds are charged in Redis
    with pytest.raises(lt.ExceedsCapacity):
        lim.try_acquire("k", tokens=2000)
    big = lim.try_acquire("k", tokens=600)  # more than a slice may be: decided in Redis
    assert big and not isinstance(big, lt.redis_state.LeasedReservation)
    big.commit(tokens=0)
    state.close()  # gives back what is left of every slice
    assert observer.status("k")[0].used == pytest.approx(used, abs=1)
    observer.state.close()


@pytest.mark.slow
def test_leases_never_over_admit_and_under_use_by_at_most_the_slices_held(redis_server: RedisServer) -> None:
    admitted, _, window, shortest = run_fleet(redis_server.url, leases=True)
    assert admitted <= 100 + 1000 * window + 1
    # Each process holds at most one slice of 10 (a tenth of the burst) unused at any time.
    assert admitted >= 0.98 * (100 + 1000 * shortest) - 4 * 10


# ---------------------------------------------------------------------------- decide.lua against the engine


@pytest.mark.parametrize("wall", [1_769_903_999.5, 1_769_904_000.0, 1_795_391_999.25, 1_798_761_599.0, 1_767_225_600.0])
def test_calendar_periods_in_lua_end_where_the_engines_do(redis_server: RedisServer, wall: float) -> None:
    """Day, week (Monday), month and fixed periods, at and around their boundaries."""
    limits = {
        "day": {"quota": 5, "per": "day"},
        "week": {"quota": 5, "per": "week"},
        "month": {"quota": 5, "per": "month"},
        "half": {"quota": 5, "per": "12h"},
    }
    engine = lt.Limiter(limits, clock=FakeClock(wall=wall))
    state = lt.RedisState(redis_server.url, prefix=fresh_prefix())
    try:
        lua = lt.Limiter(limits, state=state, clock=FakeClock(wall=wall))
        amounts = {"day": 2, "week": 2, "month": 2, "half": 2}
        assert engine.try_acquire("k", **amounts) and lua.try_acquire("k", **amounts)
        for ours, theirs in zip(lua.status("k"), engine.status("k")):
            assert ours.dimension == theirs.dimension and ours.used == theirs.used == 2
            assert ours.reset_after == pytest.approx(theirs.reset_after, abs=1e-6), ours.dimension
    finally:
        state.close()


def test_damaged_cells_never_crash_a_decision(redis_server: RedisServer) -> None:
    """Whatever bytes a cell holds, a decision is a StateError or a decision, and a later one on
    a repaired cell is exact again."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    state = lt.RedisState(redis_server.url, prefix=fresh_prefix())
    lim = lt.Limiter({"requests": "5/min", "cost_usd": {"quota": 10, "per": "day"}}, state=state)
    cells = cells_of(lim, "k", cost_usd=1)

    @settings(max_examples=100, deadline=None)
    @given(st.sampled_from(cells), st.binary(max_size=40))
    def check(cell: str, garbage: bytes) -> None:
        state.client.set(cell, garbage)
        try:
            lim.try_acquire("k", cost_usd=1)
        except lt.StateError:
            pass
        state.client.delete(*cells)
        assert lim.try_acquire("k", cost_usd=1)
        assert [s.used for s in lim.status("k")] == [1, 1.0]
        state.client.delete(*cells)

    try:
        check()
    finally:
        state.close()


def test_one_dead_cluster_node_fails_only_the_keys_of_its_slots(tmp_path: Path) -> None:
    from redis_servers import REDIS_SERVER, RedisCluster

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    cluster = RedisCluster(tmp_path)
    state = lt.RedisState(cluster.url, prefix=fresh_prefix(), cluster=True, timeout=0.5, retry_interval=0.1)
    try:
        lim = lt.Limiter({"requests": "100/min"}, state=state)
        keys = [f"k{i}" for i in range(30)]
        dead = cluster.nodes[1].port
        on_dead = {key for key in keys if state.client.get_node_from_key(cells_of(lim, key)[0]).port == dead}
        assert 0 < len(on_dead) < len(keys)
        for key in keys:
            assert lim.try_acquire(key)
        cluster.nodes[1].kill()
        for key in keys:
            if key in on_dead:
                with pytest.raises(lt.RedisUnavailable, match="node"):
                    lim.try_acquire(key)
            else:
                assert lim.try_acquire(key)  # the other nodes go on deciding
        cluster.nodes[1].start()
        deadline = time.monotonic() + 20
        while True:
            try:
                assert lim.try_acquire(sorted(on_dead)[0])
                break
            except lt.RedisUnavailable:
                assert time.monotonic() < deadline, "the restarted node was never used again"
                time.sleep(0.2)
    finally:
        state.close()
        cluster.stop()
