"""`SharedState` from Python: real processes sharing one shared-memory table.

What is covered (crates/llmthrottle-core/tests/shm.rs covers the same ground in Rust; this file
checks it end to end through the Python API and the CLI):

- exactness across processes: 8 processes (spawn, and fork with an inherited limiter) hammer
  one limit, several keys with two dimensions, and an all-or-nothing user+team acquire, on the
  real clock. GCRA's bound, admitted <= burst + rate * T, is checked with T computed exactly
  from timestamps the workers return: the clock is read *before* the call that gave a key's
  first admission and *after* the call that gave its last one, so T is never shorter than the
  span of the limiter's own clock readings (CLOCK_MONOTONIC is one clock for every process on
  the host, so no tolerance is needed for comparing readings across processes). At least 99%
  of burst + rate * T_run must be used, T_run running from the first worker's start to the
  first worker's end (all start at one barrier; until then some worker was always trying, and
  the others still run after it, so what accrued in a scheduling gap near its end is used:
  this stays exact on a loaded 2-core machine where the last worker alone may be descheduled
  for tens of ms before the run ends);
- a process killed (SIGKILL) while holding concurrency slots: `.leases()` shows it dead, and
  its slots come back through `.reap()` or on the next acquire that finds the cap full;
- 16 processes opening one name at once: exactly one creates it, one file;
- parity: one scripted sequence (limits, reservations, commit/cancel, budgets, set_limits,
  peek, status, errors) gives identical results on InProcessState and SharedState;
- bad files, paths, names and sizes are clear errors; a full table names `capacity`;
- file permissions; the `llmthrottle state` CLI.

Every test uses a name of its own and removes its table at the end (`shared_name` fixture).
No assertion depends on how fast anything runs.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import random
import signal
import stat
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import llmthrottle as lt
from llmthrottle.testing import FakeClock

PROCESSES = 8
HAMMER_NS = 2_000_000_000
NS = 1_000_000_000


@pytest.fixture
def shared_name():
    """A table name of this test's own (default path under /dev/shm); removed at the end."""
    name = f"lt-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    yield name
    lt.SharedState.remove(name)


def _run_to_completion(procs: list[Any], results: Any) -> list[Any]:
    """Starts `procs`, collects one report each from `results`, and checks they all exited 0."""
    for p in procs:
        p.start()
    reports = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return reports


def _leftover_temporaries(path: Path) -> list[str]:
    """Temporary files a creator leaves next to the table while building it."""
    prefix = f".{path.name}."
    return [p.name for p in path.parent.iterdir() if p.name.startswith(prefix)]


# ---------------------------------------------------------------------------------------------
# Many processes, one limit


# A scenario: limits (or rules) and how each call is made.
SCENARIOS: dict[str, dict[str, Any]] = {
    # One key, one dimension.
    "one": {"limits": {"requests": {"rate": "2000/s", "burst": 200}}},
    # Several keys, each limited on two dimensions; calls ask for 1-20 tokens.
    "keys2d": {
        "limits": {
            "requests": {"rate": "2000/s", "burst": 200},
            "tokens": {"rate": "10k/s", "burst": 1000},
        }
    },
    # All or nothing over a user and its team: users bind alone, the team binds them all.
    "team": {
        "rules": {
            "user:*": {"requests": {"rate": "500/s", "burst": 50}},
            "team:*": {"requests": {"rate": "2000/s", "burst": 200}},
        }
    },
}
KEYS2D = [f"k{i}" for i in range(4)]
USERS = [f"user:{i}" for i in range(6)]

# (rate per second, burst) of each limit the checks below apply, per scenario and dimension.
RATE = {
    ("one", "requests"): (2000, 200),
    ("keys2d", "requests"): (2000, 200),
    ("keys2d", "tokens"): (10_000, 1000),
    ("team", "user"): (500, 50),
    ("team", "team"): (2000, 200),
}


def _limiter(name: str, scenario: str) -> lt.Limiter:
    config = SCENARIOS[scenario]
    return lt.Limiter(config.get("limits"), rules=config.get("rules"), state=lt.SharedState(name))


def _hammer(lim: Any, scenario: str, barrier: Any, results: Any, seed: int) -> None:
    """Calls `try_acquire` as fast as it can for HAMMER_NS; reports what it was admitted.

    Puts (attempt_start_ns, attempt_end_ns, {key: [requests, tokens, first_ns, last_ns]}).
    first_ns is read just before the call that was first admitted for the key, last_ns just
    after the call last admitted."""
    if isinstance(lim, str):  # spawn: open by name here
        lim = _limiter(lim, scenario)
    rnd = random.Random(seed)
    try_acquire = lim.try_acquire
    clock = time.monotonic_ns
    admitted: dict[str, list[int]] = {}
    barrier.wait()
    start = now = clock()
    end = start + HAMMER_NS
    while now < end:
        tokens = 0
        if scenario == "one":
            keys: Any = "k"
            before = clock()
            d = try_acquire(keys)
        elif scenario == "keys2d":
            keys = rnd.choice(KEYS2D)
            tokens = rnd.randint(1, 20)
            before = clock()
            d = try_acquire(keys, requests=1, tokens=tokens)
        else:
            keys = [rnd.choice(USERS), "team:x"]
            before = clock()
            d = try_acquire(keys)
        now = clock()
        if d:
            for key in [keys] if isinstance(keys, str) else keys:
                entry = admitted.get(key)
                if entry is None:
                    entry = admitted[key] = [0, 0, before, now]
                entry[0] += 1
                entry[1] += tokens
                entry[3] = now
    results.put((start, now, admitted))


def _run_hammer(name: str, scenario: str, method: str) -> tuple[int, int, dict[str, list[int]]]:
    """Runs PROCESSES workers; returns (T_run start, T_run end, merged admissions per key):
    T_run spans from the first worker's start to the first worker's end."""
    ctx = mp.get_context(method)
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    if method == "fork":
        # The limiter and its table are inherited: the children never open the name.
        target: Any = _limiter(name, scenario)
    else:
        lt.SharedState(name)  # created here so that the workers only attach
        target = name
    procs = [ctx.Process(target=_hammer, args=(target, scenario, barrier, results, seed)) for seed in range(PROCESSES)]
    reports = _run_to_completion(procs, results)
    merged: dict[str, list[int]] = {}
    for _, _, admitted in reports:
        for key, (requests, tokens, first, last) in admitted.items():
            m = merged.setdefault(key, [0, 0, first, last])
            m[0] += requests
            m[1] += tokens
            m[2] = min(m[2], first)
            m[3] = max(m[3], last)
    run_start = min(r[0] for r in reports)
    run_end = min(r[1] for r in reports)
    return run_start, run_end, merged


def _assert_within(admitted: int, rate: int, burst: int, window_ns: int, what: str) -> None:
    """GCRA's bound over the window the admissions spanned, in exact integers."""
    assert admitted * NS <= burst * NS + rate * window_ns, (
        f"{what}: {admitted} admitted within {window_ns / 1e9:.6f}s exceeds burst {burst} + {rate}/s"
    )


def _assert_used(admitted: int, rate: int, burst: int, run_ns: int, what: str) -> None:
    quota = burst + rate * run_ns / NS
    assert admitted >= 0.99 * quota, f"{what}: only {admitted} of {quota:.0f} admitted ({admitted / quota:.2%})"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_processes_hammering_one_limit_never_over_admit(shared_name, method):
    run_start, run_end, merged = _run_hammer(shared_name, "one", method)
    requests, _, first, last = merged["k"]
    rate, burst = RATE["one", "requests"]
    _assert_within(requests, rate, burst, last - first, "requests")
    _assert_used(requests, rate, burst, run_end - run_start, "requests")


@pytest.mark.slow
def test_processes_hammering_several_keys_on_two_dimensions_never_over_admit(shared_name):
    run_start, run_end, merged = _run_hammer(shared_name, "keys2d", "spawn")
    assert sorted(merged) == KEYS2D
    (req_rate, req_burst), (tok_rate, tok_burst) = RATE["keys2d", "requests"], RATE["keys2d", "tokens"]
    for key, (requests, tokens, first, last) in merged.items():
        _assert_within(requests, req_rate, req_burst, last - first, f"{key} requests")
        _assert_within(tokens, tok_rate, tok_burst, last - first, f"{key} tokens")
        # Tokens bind (10.5 per call on average against 5 per request's worth).
        _assert_used(tokens, tok_rate, tok_burst, run_end - run_start, f"{key} tokens")


@pytest.mark.slow
def test_processes_acquiring_user_and_team_all_or_nothing(shared_name):
    run_start, run_end, merged = _run_hammer(shared_name, "team", "spawn")
    team, _, first, last = merged.pop("team:x")
    users = 0
    user_rate, user_burst = RATE["team", "user"]
    for key, (requests, _, u_first, u_last) in merged.items():
        _assert_within(requests, user_rate, user_burst, u_last - u_first, key)
        users += requests
    assert users == team, "every admitted call charged its user and the team, and nothing else"
    rate, burst = RATE["team", "team"]
    _assert_within(team, rate, burst, last - first, "team")
    _assert_used(team, rate, burst, run_end - run_start, "team")


# ---------------------------------------------------------------------------------------------
# A process killed while holding concurrency slots


def _hold(name: str, count: int, ready: Any) -> None:
    lim = lt.Limiter({"concurrency": 4}, state=lt.SharedState(name))
    held = [lim.try_acquire("k") for _ in range(count)]
    assert all(held)
    ready.put(os.getpid())
    time.sleep(600)  # until killed


def _start_holder(name: str, count: int) -> tuple[Any, int]:
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    child = ctx.Process(target=_hold, args=(name, count, ready))
    child.start()
    pid = ready.get(timeout=60)
    return child, pid


def _kill(child: Any) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL


@pytest.mark.slow
def test_slots_of_a_killed_process_come_back_through_reap(shared_name):
    state = lt.SharedState(shared_name)
    lim = lt.Limiter({"concurrency": 4}, state=state)
    child, pid = _start_holder(shared_name, 3)
    try:
        mine = lim.try_acquire("k")
        assert mine, "3 of 4 held by the child"
        assert not lim.try_acquire("k"), "4 of 4 held"
        holders = Counter((p, alive, phase) for p, alive, phase, _label, _key in state.leases())
        assert holders == {(pid, True, "held"): 3, (os.getpid(), True, "held"): 1}
        assert state.reap() == 0, "nothing to reap while the holder lives"
    finally:
        _kill(child)
    leases = state.leases()
    assert Counter((p, alive) for p, alive, *_ in leases) == {(pid, False): 3, (os.getpid(), True): 1}
    assert all(key == "k" for *_, key in leases)
    assert state.reap() == 3
    assert [p for p, *_ in state.leases()] == [os.getpid()]
    again = [lim.try_acquire("k") for _ in range(3)]
    assert all(again), "the killed process's slots are given back"
    assert not lim.try_acquire("k"), "and no more than those"
    for r in [*again, mine]:
        r.commit()
    assert state.leases() == []
    assert lim.status("k")[0].used == 0


@pytest.mark.slow
def test_slots_of_a_killed_process_come_back_on_the_next_full_acquire(shared_name):
    state = lt.SharedState(shared_name)
    lim = lt.Limiter({"concurrency": 4}, state=state)
    child, pid = _start_holder(shared_name, 4)
    try:
        assert not lim.try_acquire("k"), "4 of 4 held by the child"
    finally:
        _kill(child)
    assert {(p, alive) for p, alive, *_ in state.leases()} == {(pid, False)}
    # No reap(): a denied acquire scans for dead holders, at most once per millisecond per
    # process, so the first retry may still be denied. Poll (bounded, not timed).
    first = None
    for _ in range(10_000):
        first = lim.try_acquire("k")
        if first:
            break
        time.sleep(0.001)
    assert first, "the killed process's slots came back"
    rest = [lim.try_acquire("k") for _ in range(3)]
    assert all(rest)
    assert not lim.try_acquire("k")
    assert {p for p, *_ in state.leases()} == {os.getpid()}
    for r in [first, *rest]:
        r.cancel()
    assert lim.status("k")[0].used == 0


def test_reservations_made_before_a_fork_stay_the_parents(shared_name):
    """A forked child inherits the parent's reservation but must not settle it: neither its
    concurrency slot nor its tokens come back twice."""
    lim = lt.Limiter({"tokens": "1000/h", "concurrency": 2}, state=lt.SharedState(shared_name))
    held = lim.try_acquire("k", tokens=600)
    assert held
    pid = os.fork()
    if pid == 0:  # child: settle the inherited reservation, then take what is left
        code = 1
        try:
            held.cancel()
            r = lim.try_acquire("k", tokens=400)
            code = 0 if (r and not lim.try_acquire("k", tokens=1) and not lim.try_acquire("k", tokens=0)) else 2
            r.commit()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    tokens, concurrency = lim.status("k")
    assert (tokens.remaining, concurrency.used) == (0, 1), "the parent's reservation is still held"
    held.cancel()
    tokens, concurrency = lim.status("k")
    assert (tokens.remaining, concurrency.used) == (600, 0)


# ---------------------------------------------------------------------------------------------
# Many processes opening one name at once


def _open_at_once(name: str, capacity: int, barrier: Any, results: Any) -> None:
    barrier.wait()
    state = lt.SharedState(name, capacity=capacity)
    st = os.stat(state.path)
    lim = lt.Limiter({"requests": "1000/h"}, state=state)
    allowed = bool(lim.try_acquire("x"))
    results.put(
        (state.created, str(state.path), st.st_ino, state.stats()["file_bytes"], state.stats()["capacity"], allowed)
    )


@pytest.mark.slow
def test_processes_opening_at_once_share_exactly_one_table(shared_name):
    n = 16
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    # Each asks for a different size: only the creator's counts.
    procs = [ctx.Process(target=_open_at_once, args=(shared_name, 1000 + i, barrier, results)) for i in range(n)]
    reports = _run_to_completion(procs, results)
    assert sum(created for created, *_ in reports) == 1
    assert len({(path, inode, size, capacity) for _, path, inode, size, capacity, _ in reports}) == 1
    assert all(allowed for *_, allowed in reports)
    state = lt.SharedState.attach(shared_name)
    assert not state.created
    assert os.stat(state.path).st_ino == reports[0][2]
    lim = lt.Limiter({"requests": "1000/h"}, state=state)
    assert lim.status("x")[0].used == n, "every process counted in the one table"
    assert _leftover_temporaries(state.path) == []


def test_a_second_open_attaches_and_attach_never_creates(shared_name):
    with pytest.raises(lt.StateError, match="no shared table"):
        lt.SharedState.attach(shared_name)
    first = lt.SharedState(shared_name, capacity=500)
    second = lt.SharedState(shared_name, capacity=10_000)
    assert first.created and not second.created
    assert first.path == second.path == Path(f"/dev/shm/llmthrottle-{shared_name}")
    assert first.name == shared_name
    assert second.stats()["capacity"] == 500
    assert lt.SharedState.remove(shared_name) is True
    assert lt.SharedState.remove(shared_name) is False


# ---------------------------------------------------------------------------------------------
# Same results as in-process


def _script(state: Any) -> list[Any]:
    """One scripted sequence; returns everything observable about it.

    A FakeClock starts at monotonic 1 s, far behind the real CLOCK_MONOTONIC, and shared tables
    hold absolute times (TATs in monotonic ns): run the script only on a fresh table, never on
    one that a real-clock limiter (or an earlier run) has written."""
    clock = FakeClock()
    budgets = [lt.Budget("team:*", 1.0, "day")]
    lim = lt.Limiter(
        {"requests": {"rate": "10/min", "burst": 5}, "tokens": "1000/min", "concurrency": 3},
        state=state,
        clock=clock,
        budgets=budgets,
    )
    out: list[Any] = []

    def rec(d: Any) -> None:
        out.append(
            (
                bool(d),
                round(d.retry_after, 9),
                round(d.reset_after, 9),
                d.limited_by,
                d.limited_key,
                sorted(d.remaining.items()),
            )
        )

    def status(*keys: str) -> None:
        out.append([(k, [tuple(s) for s in lim.status(k)]) for k in keys])

    def error(fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:
            out.append((type(e).__name__, str(e), getattr(e, "retry_after", None), getattr(e, "limited_by", None)))
        else:
            out.append("no error")

    # Burst, then a denial with its exact retry_after; the clock frees one request.
    for _ in range(5):
        r = lim.try_acquire("user:a", tokens=100)
        rec(r)
        r.commit()
    rec(lim.try_acquire("user:a", tokens=100))
    rec(lim.peek("user:a", tokens=100))
    clock.advance(6)
    # Reservation reconciled below and above the reservation, and cancelled.
    r = lim.try_acquire("user:a", tokens=300)
    rec(r)
    r.commit(tokens=100)
    status("user:a")
    clock.advance(12)
    r = lim.acquire("user:a", tokens=200, timeout=0)
    r.commit(tokens=350)
    status("user:a")
    clock.advance(6)
    with pytest.raises(RuntimeError):
        with lim.acquire("user:a", tokens=50, timeout=0):
            raise RuntimeError("the call failed: cancelled")
    status("user:a")
    # Waiting for a rate limit (the fake clock moves), and timing out.
    error(lim.acquire, "user:b", tokens=2000, timeout=0)  # more than the burst: never fits
    for _ in range(5):
        lim.try_acquire("user:b").commit()
    error(lim.acquire, "user:b", timeout=1)
    r = lim.acquire("user:b", timeout=10)
    rec(r)
    r.cancel()
    # Concurrency: three held, the fourth denied until one is settled.
    held = [lim.try_acquire("user:c", requests=0) for _ in range(3)]
    for h in held:
        rec(h)
    rec(lim.try_acquire("user:c", requests=0))
    held[0].commit()
    rec(lim.try_acquire("user:c", requests=0))
    status("user:c")
    # All or nothing over several keys with a budget: a denied call charges nothing anywhere.
    for _ in range(3):
        d = lim.try_acquire(["user:d", "team:x"], budget_usd=0.4)
        rec(d)
        if d:
            d.commit(budget_usd=0.3)
    rec(lim.try_acquire(["user:d", "team:x"], budget_usd=0.2))
    error(lim.acquire, ["user:d", "team:x"], budget_usd=0.2, timeout=0)
    status("user:d", "team:x")
    error(lim.try_acquire, ["team:x"], budget_usd=5)
    # Limits replaced at runtime: counters carry over.
    lim.set_limits({"requests": {"rate": "20/min", "burst": 10}, "tokens": "1000/min", "concurrency": 3})
    status("user:a", "user:b", "team:x")
    rec(lim.try_acquire("user:b"))
    lim.set_limits({"requests": "1/min", "tokens": "1000/min"}, budgets=[lt.Budget("team:*", 2.0, "day")])
    status("user:a", "user:b", "team:x")
    rec(lim.try_acquire(["user:e", "team:x"], budget_usd=0.5))
    # A day later the calendar budget has reset.
    clock.advance(86_400)
    rec(lim.try_acquire(["user:f", "team:x"], budget_usd=1.9))
    status("team:x")
    # Bad input is an error and charges nothing.
    for bad in (-1, float("nan"), float("inf"), 2**70):
        error(lim.try_acquire, "user:g", tokens=bad)
    error(lim.try_acquire, "")
    status("user:g")
    return out


def test_shared_state_gives_the_same_results_as_in_process(shared_name):
    expected = _script(lt.InProcessState())
    actual = _script(lt.SharedState(shared_name))
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a == e, f"step {i}"


def test_limiters_on_one_shared_state_share_counters(shared_name):
    """Two limiters (as in two processes) with the same namespace see one counter; another
    namespace does not."""
    a = lt.Limiter({"requests": "3/h"}, state=lt.SharedState(shared_name))
    b = lt.Limiter({"requests": "3/h"}, state=lt.SharedState(shared_name))
    other = lt.Limiter({"requests": "3/h"}, state=lt.SharedState(shared_name), namespace="other")
    assert a.try_acquire("k") and b.try_acquire("k") and a.try_acquire("k")
    assert not b.try_acquire("k")
    assert other.try_acquire("k")
    assert a.status("k")[0].remaining == 0 and other.status("k")[0].remaining == 2


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_names_are_config_errors():
    for name in ["", "a/b", "../x", "/abs", ".hidden", "a b", "x\0y", "é", "n" * 201]:
        with pytest.raises(lt.ConfigError, match="name"):
            lt.SharedState(name)
        with pytest.raises(lt.ConfigError):
            lt.SharedState.attach(name)
        with pytest.raises(lt.ConfigError):
            lt.SharedState.remove(name)
    # The longest name that is allowed works.
    name = "n" * 190 + uuid.uuid4().hex[:10]
    try:
        assert lt.SharedState(name).created
    finally:
        lt.SharedState.remove(name)


def test_bad_sizes_are_errors_not_crashes(tmp_path):
    path = tmp_path / "t"
    for capacity in [0, 10**15, 2**31 + 1]:
        with pytest.raises(lt.ConfigError, match="capacity"):
            lt.SharedState("t", capacity=capacity, path=path)
    for capacity in [-1, 2**64]:
        with pytest.raises(OverflowError):
            lt.SharedState("t", capacity=capacity, path=path)
    with pytest.raises(TypeError):
        lt.SharedState("t", capacity=1e15, path=path)  # type: ignore[arg-type]
    with pytest.raises(lt.ConfigError, match="lease capacity"):
        lt.SharedState("t", lease_capacity=0, path=path)
    with pytest.raises(lt.ConfigError, match="long key capacity"):
        lt.SharedState("t", long_key_capacity=0, path=path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_size_beyond_the_file_system_is_a_state_error(tmp_path):
    # Valid by the layout rules (2^31 keys is ~250 GB) but larger than /dev/shm: the space is
    # reserved up front, so this is a clear error instead of a SIGBUS later.
    name = f"lt-test-huge-{uuid.uuid4().hex[:12]}"
    try:
        with pytest.raises(lt.StateError, match="no space left"):
            lt.SharedState(name, capacity=2**31)
        assert not Path(f"/dev/shm/llmthrottle-{name}").exists()
        assert _leftover_temporaries(Path(f"/dev/shm/llmthrottle-{name}")) == []
    finally:
        lt.SharedState.remove(name)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "table"
    path.write_bytes(b"hello")
    with pytest.raises(lt.StateError, match="only 5 bytes"):
        lt.SharedState("t", path=path)
    path.write_bytes(b"")
    with pytest.raises(lt.StateError, match="only 0 bytes"):
        lt.SharedState("t", path=path)
    path.write_bytes(random.Random(7).randbytes(1 << 20))
    with pytest.raises(lt.StateError, match="not an llmthrottle shared table"):
        lt.SharedState("t", path=path)
    with pytest.raises(lt.StateError, match="not an llmthrottle shared table"):
        lt.SharedState.attach("t", path=path)
    assert path.stat().st_size == 1 << 20, "a refused file is left alone"
    path.unlink()

    # A real table cut short.
    state = lt.SharedState("t", capacity=1000, path=path)
    size = state.stats()["file_bytes"]
    del state
    os.truncate(path, size // 2)
    with pytest.raises(lt.StateError, match="truncated"):
        lt.SharedState("t", path=path)
    path.unlink()


def _patch(path: Path, offset: int, fmt: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


# Header layout (crates/llmthrottle-core/src/shm/header.rs, repr(C), native endian = little on
# every platform this runs on): magic [u8; 8] at 0, layout_version u32 at 8, header_bytes u32
# at 12, short/long slot bytes, scope entry bytes, lease record bytes (u32 each) at 16..32,
# capacity u64 at 32.
VERSION_OFFSET = 8
CAPACITY_OFFSET = 32


def test_a_table_of_another_layout_version_is_refused(tmp_path):
    path = tmp_path / "table"
    lt.SharedState("t", capacity=100, path=path)
    assert path.read_bytes()[:8] == b"LLMTHRTL"
    assert struct.unpack_from("<I", path.read_bytes(), VERSION_OFFSET) == (2,)
    _patch(path, VERSION_OFFSET, "<I", 999)
    with pytest.raises(lt.StateError, match=r"layout 999.*state reset") as info:
        lt.SharedState("t", capacity=100, path=path)
    assert str(path) in str(info.value)
    with pytest.raises(lt.StateError, match="layout 999"):
        lt.SharedState.attach("t", path=path)
    # A header whose sizes disagree with its own layout is corrupt.
    _patch(path, VERSION_OFFSET, "<I", 2)
    _patch(path, CAPACITY_OFFSET, "<Q", 101)
    with pytest.raises(lt.StateError, match="corrupt"):
        lt.SharedState("t", path=path)
    # Once reset, the name is usable again.
    assert lt.SharedState.remove("t", path=path)
    assert lt.SharedState("t", capacity=100, path=path).created


def test_unusable_locations_are_clear_errors(tmp_path):
    # /proc refuses new files, even for root.
    with pytest.raises(lt.StateError, match="cannot"):
        lt.SharedState("t", path="/proc/llmthrottle-test")
    # A parent that is a regular file.
    parent = tmp_path / "file"
    parent.write_text("x")
    with pytest.raises(lt.StateError, match="Not a directory"):
        lt.SharedState("t", path=parent / "table")
    # No such directory.
    with pytest.raises(lt.StateError, match="does not exist"):
        lt.SharedState("t", path=tmp_path / "no" / "such" / "table")
    # A directory, a device or a symlink where the file should be.
    with pytest.raises(lt.StateError):
        lt.SharedState("t", path=tmp_path)
    with pytest.raises(lt.StateError, match="not a regular file"):
        lt.SharedState("t", path="/dev/null")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(lt.StateError):
        lt.SharedState("t", path=tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists(), "a symlink is never followed"
    with pytest.raises(lt.ConfigError, match="must name a file"):
        lt.SharedState("t", path="")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_directory_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(lt.StateError, match="permission denied"):
            lt.SharedState("t", path=ro / "table")
    finally:
        ro.chmod(0o700)


def test_a_full_table_says_how_to_size_it(shared_name):
    state = lt.SharedState(shared_name, capacity=4, long_key_capacity=1)
    lim = lt.Limiter({"requests": "2/h"}, state=state)
    assert lim.try_acquire("a")
    with pytest.raises(lt.StateError, match="capacity") as info:
        for i in range(10_000):
            lim.try_acquire(f"key-{i}")
    message = str(info.value)
    assert shared_name in message or str(state.path) in message, message
    # Nothing is corrupted: the keys already in keep their counters.
    assert lim.status("a")[0].remaining == 1
    with pytest.raises(lt.StateError, match="capacity"):
        lim.try_acquire(["one-more-key", "a"])
    assert lim.status("a")[0].remaining == 1
    assert lim.try_acquire("a") and not lim.try_acquire("a")
    # Long keys have their own (here: tiny) table.
    with pytest.raises(lt.StateError, match="capacity"):
        for i in range(10_000):
            lim.try_acquire(f"a-key-longer-than-forty-bytes-{i:020d}")


def _fill(lim: lt.Limiter) -> None:
    with pytest.raises(lt.StateError, match="capacity"):
        for i in range(10_000):
            lim.try_acquire(f"key-{i}")


@pytest.mark.parametrize("change", ["keys", "dimensions"])
def test_an_acquire_that_finds_the_table_full_charges_nothing(shared_name, change):
    """All or nothing holds when the table cannot place one of the cells: a full table is an
    error, and an error charges nothing anywhere."""
    lim = lt.Limiter({"requests": "2/h"}, state=lt.SharedState(shared_name, capacity=4))
    assert lim.try_acquire("a")
    _fill(lim)
    with pytest.raises(lt.StateError, match="capacity"):
        if change == "keys":  # "a" has its cell; "one-more-key" finds no room
            lim.try_acquire(["a", "one-more-key"])
        else:  # "a" has its requests cell; its new tokens cell finds no room
            lim.set_limits({"requests": "2/h", "tokens": "100/h"})
            lim.try_acquire("a", tokens=5)
    assert lim.status("a")[0].remaining == 1


# ---------------------------------------------------------------------------------------------
# Permissions


def test_files_are_private_unless_group_access_is_asked_for(tmp_path):
    old = os.umask(0o077)  # a strict umask must not take away the group bits asked for
    try:
        private = lt.SharedState("t", path=tmp_path / "private")
        group = lt.SharedState("t", path=tmp_path / "group", group_access=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(private.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(group.path).st_mode) == 0o660
    old = os.umask(0)  # a permissive umask must not add bits for others
    try:
        loose = lt.SharedState("t", path=tmp_path / "loose")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(loose.path).st_mode) == 0o600


def test_the_default_path_is_under_dev_shm_and_private(shared_name):
    state = lt.SharedState(shared_name)
    assert state.path == Path("/dev/shm") / f"llmthrottle-{shared_name}"
    assert stat.S_IMODE(os.stat(state.path).st_mode) == 0o600


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmthrottle.cli", "state", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_inspect_shows_keys_and_live_holders(shared_name):
    state = lt.SharedState(shared_name)
    lim = lt.Limiter({"requests": "10/min", "concurrency": 5}, state=state)
    held = lim.try_acquire("tenant:acme")
    assert held
    done = _cli("inspect", shared_name, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["stats"]["path"] == str(state.path)
    assert report["stats"]["live"] == 2
    by_kind = {e["kind"]: e for e in report["entries"]}
    assert set(by_kind) == {"rate", "concurrency"}
    assert all(
        e["key"] == "tenant:acme" and e["namespace"] == "default" and e["pattern"] == "*" for e in report["entries"]
    )
    assert by_kind["concurrency"]["in_flight"] == 1
    assert 0 < by_kind["rate"]["drains_in_s"] <= 6.0
    assert report["leases"] == [
        {"pid": os.getpid(), "alive": True, "phase": "held", "limit": "concurrency:concurrency#0", "key": "tenant:acme"}
    ]
    text = _cli("inspect", shared_name)
    assert text.returncode == 0, text.stderr
    assert "tenant:acme" in text.stdout and "1 in flight" in text.stdout
    assert f"held by pid {os.getpid()} (alive, held)" in text.stdout
    held.commit()
    report = json.loads(_cli("inspect", shared_name, "--json").stdout)
    assert report["leases"] == []


def test_cli_reset_removes_the_table_and_inspect_of_a_missing_name_fails(shared_name):
    lt.Limiter({"requests": "10/min"}, state=lt.SharedState(shared_name)).try_acquire("k")
    path = Path(f"/dev/shm/llmthrottle-{shared_name}")
    assert path.exists()
    done = _cli("reset", shared_name, "--yes")
    assert done.returncode == 0, done.stderr
    assert "removed" in done.stdout
    assert not path.exists()
    missing = _cli("inspect", shared_name)
    assert missing.returncode == 1
    assert "no shared table" in missing.stderr and missing.stdout == ""
    again = _cli("reset", shared_name, "--yes")
    assert again.returncode == 0 and "no table named" in again.stdout
    bad = _cli("inspect", "a/b")
    assert bad.returncode == 1 and "must be 1-200 characters" in bad.stderr


def test_cli_inspect_of_a_bad_file_fails_clearly(tmp_path):
    path = tmp_path / "table"
    lt.SharedState("t", path=path)
    _patch(path, VERSION_OFFSET, "<I", 999)
    done = _cli("inspect", "t", "--path", str(path), "--json")
    assert done.returncode == 1
    assert "layout 999" in done.stderr and "Traceback" not in done.stderr


def _count_with(state: lt.SharedState) -> bool:
    return bool(lt.Limiter({"requests": "1/h"}, state=state).try_acquire("pickled"))


def test_a_shared_state_can_be_handed_to_workers(shared_name):
    """Pickling re-attaches to the same table, so a pool worker shares the parent's counters."""
    state = lt.SharedState(shared_name)
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_count_with, [state, state])
    assert sorted(results) == [False, True]
    assert pickle.loads(pickle.dumps(state)).path == state.path


def test_a_rate_only_limiter_never_reclaims_another_limiters_quota(shared_name):
    """Tidying a full-ish table judges quota cells by a real wall clock, never by 'time 0'."""
    state = lt.SharedState(shared_name, capacity=64)
    quota = lt.Limiter({"cost_usd": {"quota": 100, "per": "day"}}, state=state, namespace="budget")
    quota.try_acquire("tenant:a", cost_usd=60).commit()
    rates = lt.Limiter({"requests": "1M/s"}, state=state, namespace="rates")
    for i in range(3000):
        rates.try_acquire(f"u{i}")
    assert quota.status("tenant:a")[0].used == 60.0
    assert not quota.try_acquire("tenant:a", cost_usd=60)


def test_cli_inspect_without_a_name_lists_the_tables(shared_name):
    lt.SharedState(shared_name)
    listed = json.loads(_cli("inspect", "--json").stdout)
    mine = [t for t in listed if t["name"] == shared_name]
    assert len(mine) == 1 and mine[0]["uid"] == os.getuid() and mine[0]["mode"] == "0600" and mine[0]["bytes"] > 0
    text = _cli("inspect")
    assert text.returncode == 0 and shared_name in text.stdout
