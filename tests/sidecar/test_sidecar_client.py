"""The sidecar client: the in-process Limiter's API, answered by a real `llmthrottle serve`."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest
from sidecar_helpers import ServerProcess, start_server, unique

import llmthrottle as lt
from llmthrottle.client import Sidecar, SidecarUnavailable

LIMITS = {"requests": "10/h", "tokens": "1000/h", "concurrency": 3}


@pytest.fixture
def sidecar(sidecar_server: ServerProcess) -> Iterator[Sidecar]:
    client = Sidecar(sidecar_server.socket)
    yield client
    client.close()


def _script(limiter: object, key: str) -> list[tuple[bool, object]]:
    """A sequence of calls whose outcomes depend only on the limits (no timing)."""
    out: list[tuple[bool, object]] = []
    held = []
    for tokens in (100, 200, 300, 900, 50):
        decision = limiter.try_acquire(key, tokens=tokens)  # type: ignore[attr-defined]
        out.append((bool(decision), decision.limited_by))
        if decision:
            held.append(decision)
    held[0].commit(tokens=10)  # refund 90, release a slot
    held[1].cancel()
    for tokens in (600, 1, 1):
        decision = limiter.try_acquire(key, tokens=tokens)  # type: ignore[attr-defined]
        out.append((bool(decision), decision.limited_by))
    return out


def test_same_decisions_as_the_in_process_limiter(sidecar: Sidecar) -> None:
    remote = lt.Limiter(LIMITS, state=sidecar, namespace=unique("ns"))
    local = lt.Limiter(LIMITS)
    assert _script(remote, "tenant:a") == _script(local, "tenant:a")


def test_decision_and_reservation_attributes(sidecar: Sidecar) -> None:
    lim = lt.Limiter(LIMITS, state=sidecar, namespace=unique("ns"))
    reservation = lim.try_acquire("k", tokens=100)
    assert reservation and reservation.allowed
    assert (reservation.retry_after, reservation.delay, reservation.limited_by) == (0.0, 0.0, None)
    assert reservation.remaining == {"requests": 9, "tokens": 900, "concurrency": 2}
    assert reservation.reserved == {"requests": 1, "tokens": 100, "concurrency": 1}
    assert not reservation.settled
    reservation.commit(tokens=50)
    assert reservation.settled
    with pytest.raises(lt.LlmthrottleError, match="already committed or cancelled"):
        reservation.commit()
    with pytest.raises(lt.LlmthrottleError):
        reservation.cancel()
    status = {s.dimension: s for s in lim.status("k")}
    assert status["tokens"].used == 50
    assert status["concurrency"].used == 0
    assert isinstance(lim.status("k")[0], lt.LimitState)
    assert lim.dimensions == ["requests", "tokens", "concurrency"]
    assert lim.peek("k", tokens=10).allowed


def test_engine_exceptions_cross_the_socket(sidecar: Sidecar) -> None:
    lim = lt.Limiter(LIMITS, state=sidecar, namespace=unique("ns"))
    with pytest.raises(lt.ExceedsCapacity, match="can never be admitted"):
        lim.try_acquire("k", tokens=5000)
    with pytest.raises(ValueError, match="unknown dimension 'foo'"):
        lim.try_acquire("k", foo=1)
    with pytest.raises(ValueError, match="must not be empty"):
        lim.try_acquire("")
    with pytest.raises(lt.ConfigError):
        lt.Limiter({"requests": "lots"}, state=sidecar).try_acquire("k")
    with pytest.raises(lt.ConfigError):
        lt.Limiter({"requests": 5}, state=sidecar)  # caught locally by the same normalize()
    reservation = lim.try_acquire("k", tokens=10)
    with pytest.raises(ValueError):
        reservation.commit(tokens=-5)
    assert not reservation.settled, "a rejected commit leaves the reservation open"
    reservation.commit(tokens=5)


def test_exception_attributes_survive_the_wire(sidecar: Sidecar, sidecar_server: ServerProcess) -> None:
    namespace = unique("ns")
    local = lt.Limiter(LIMITS)
    remote = lt.Limiter(LIMITS, state=sidecar, namespace=namespace)
    errors = []
    for lim in (local, remote):
        with pytest.raises(lt.ExceedsCapacity) as raised:
            lim.acquire("tenant:acme", tokens=5000)
        errors.append(raised.value)
    attributes = ("key", "dimension", "requested", "capacity")
    assert [tuple(getattr(e, a) for a in attributes) for e in errors] == [("tenant:acme", "tokens", 5000, 1000)] * 2
    # Over HTTP the same attributes come as the answer's details.
    status, _, body = sidecar_server.http(
        "POST", "/v1/acquire", {"namespace": namespace, "key": "tenant:acme", "amounts": {"tokens": 5000}}
    )
    assert (status, body["error"]) == (422, "ExceedsCapacity")
    assert body["details"] == {"key": "tenant:acme", "dimension": "tokens", "requested": 5000, "capacity": 1000}


def test_every_error_kind_the_sidecar_answers_with_is_in_the_one_table() -> None:
    import pathlib
    import re

    from llmthrottle.sidecar.errors import ERRORS, AccessDenied, exception_for

    source = pathlib.Path(lt.__file__).parent / "sidecar"
    used = {m for f in source.glob("*.py") for m in re.findall(r'ServiceError\(\s*"(\w+)"', f.read_text())}
    used |= {m for f in source.glob("*.py") for m in re.findall(r'ERROR, \[\s*"(\w+)"', f.read_text())}
    assert used and used <= set(ERRORS), used - set(ERRORS)
    denied = exception_for("AccessDenied", "uid 5 may not use key 'x'")
    assert isinstance(denied, AccessDenied) and isinstance(denied, lt.LlmthrottleError)
    assert isinstance(denied, PermissionError)
    assert isinstance(exception_for("NoSuchKind", "?"), lt.LlmthrottleError)
    # Every row the client can raise is a LlmthrottleError, a builtin the server matched included.
    for kind in ERRORS:
        assert isinstance(exception_for(kind, "m"), lt.LlmthrottleError), kind
    assert isinstance(exception_for("ValueError", "m"), lt.InvalidInput)
    assert isinstance(exception_for("TypeError", "m"), TypeError)


def test_every_exception_the_package_defines_is_a_llmthrottle_error() -> None:
    import importlib
    import inspect
    import pkgutil

    import llmthrottle

    for module_info in pkgutil.walk_packages(llmthrottle.__path__, "llmthrottle."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("llmthrottle")
                and not name.startswith("_")  # private control flow that never leaves its module
            ):
                assert issubclass(value, lt.LlmthrottleError), f"{module_info.name}.{name}"
    # ...and the ones documented as ValueErrors are ValueErrors too.
    for cls in (lt.ConfigError, lt.ExceedsCapacity, lt.InvalidInput):
        assert issubclass(cls, lt.LlmthrottleError) and issubclass(cls, ValueError)
    assert issubclass(lt.InvalidType, lt.LlmthrottleError) and issubclass(lt.InvalidType, TypeError)
    with pytest.raises(lt.InvalidType, match="tokens"):
        lt.Limiter({"tokens": "10/s"}).try_acquire("k", tokens="many")
    with pytest.raises(lt.InvalidInput, match="negative"):
        lt.Limiter({"tokens": "10/s"}).try_acquire("k", tokens=-1)


def test_bad_input_through_the_sidecar_is_the_same_exception(sidecar: Sidecar) -> None:
    lim = lt.Limiter(LIMITS, state=sidecar, namespace=unique("ns"))
    with pytest.raises(lt.InvalidInput, match="negative"):
        lim.try_acquire("k", tokens=-1)


def test_context_manager_commits_or_cancels(sidecar: Sidecar) -> None:
    lim = lt.Limiter(LIMITS, state=sidecar, namespace=unique("ns"))
    with lim.acquire("k", tokens=100, timeout=1.0) as reservation:
        pass
    assert reservation.settled
    with pytest.raises(RuntimeError):
        with lim.acquire("k", tokens=700, timeout=1.0):
            raise RuntimeError("the call failed")
    tokens = {s.dimension: s for s in lim.status("k")}["tokens"]
    assert tokens.used == 100, "the failed call's 700 tokens were refunded"


def test_acquire_raises_rate_limited_when_it_cannot_wait_long_enough(sidecar: Sidecar) -> None:
    lim = lt.Limiter({"requests": "1/h"}, state=sidecar, namespace=unique("ns"))
    lim.acquire("k", timeout=0).commit()
    with pytest.raises(lt.RateLimited) as error:
        lim.acquire("k", timeout=0.1)
    assert error.value.limited_by == "requests"


def test_multi_key_acquire_is_all_or_nothing(sidecar: Sidecar) -> None:
    lim = lt.Limiter(
        rules={"user:*": {"requests": "5/h"}, "team:*": {"requests": "1/h"}}, state=sidecar, namespace=unique("ns")
    )
    assert lim.try_acquire(["user:1", "team:1"])
    denied = lim.try_acquire(["user:2", "team:1"])
    assert not denied and denied.limited_key == "team:1"
    assert {s.dimension: s.used for s in lim.status("user:2")} == {"requests": 0}


def test_async_api(sidecar: Sidecar) -> None:
    lim = lt.Limiter({"requests": "100/h", "concurrency": 50}, state=sidecar, namespace=unique("ns"))

    async def main() -> None:
        decisions = await asyncio.gather(*(lim.try_acquire_async("k") for _ in range(60)))
        assert [bool(d) for d in decisions] == [True] * 50 + [False] * 10
        await asyncio.gather(*(d.cancel_async() for d in decisions if d))
        reservation = await lim.acquire_async("k", timeout=1.0)
        await reservation.commit_async()
        async with lim.acquire_async("k", timeout=1.0) as held:
            assert held
        assert held.settled
        sidecar.close()
        await asyncio.sleep(0)

    asyncio.run(main())


def test_async_acquire_waits_for_a_concurrency_slot(sidecar: Sidecar) -> None:
    lim = lt.Limiter({"concurrency": 1}, state=sidecar, namespace=unique("ns"))

    async def main() -> None:
        first = await lim.acquire_async("k")

        async def release_soon() -> None:
            await asyncio.sleep(0.05)
            await first.commit_async()

        release = asyncio.ensure_future(release_soon())
        second = await lim.acquire_async("k", timeout=30)
        await release
        assert first.settled and second
        await second.cancel_async()
        sidecar.close()
        await asyncio.sleep(0)

    asyncio.run(main())


def test_limiter_none_uses_the_servers_policy(sidecar: Sidecar) -> None:
    lim = lt.Limiter(None, state=sidecar, namespace="tight")
    assert lim.dimensions == ["requests", "tokens", "concurrency"]
    assert lim.try_acquire(unique()).allowed
    with pytest.raises(lt.ConfigError, match="not defined by the policy file"):
        lt.Limiter(None, state=sidecar, namespace=unique("undefined")).try_acquire("k")


def test_fake_clock_and_budgets_are_refused_clearly(sidecar: Sidecar) -> None:
    with pytest.raises(lt.ConfigError, match="FakeClock"):
        lt.Limiter(LIMITS, state=sidecar, clock=lt._native.FakeClock())


# ------------------------------------------------------------------ unavailability


@pytest.fixture
def no_server() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        yield os.path.join(directory, "nothing.sock")


def test_fail_closed_raises_a_clear_error(no_server: str, caplog: pytest.LogCaptureFixture) -> None:
    lim = lt.Limiter(LIMITS, state=Sidecar(no_server))
    with caplog.at_level(logging.WARNING, logger="llmthrottle"):
        with pytest.raises(SidecarUnavailable, match="is `llmthrottle serve` running"):
            lim.try_acquire("k")
        with pytest.raises(SidecarUnavailable, match="fail_closed"):
            lim.acquire("k", timeout=1.0)
    assert "sidecar unavailable" in caplog.text
    assert isinstance(SidecarUnavailable("x"), lt.StateError)


def test_a_server_that_never_answers_times_out(no_server: str) -> None:
    """The sync client's timeout is the kernel's (SO_RCVTIMEO): a silent peer is reported as a
    timeout within about `timeout` seconds, and the next call tries a fresh connection."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(no_server)
    listener.listen(8)  # accepts (in the kernel's backlog) and never reads nor answers
    try:
        sidecar = Sidecar(no_server, timeout=0.2, retry_interval=0.0)
        lim = lt.Limiter(LIMITS, state=sidecar)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(SidecarUnavailable, match=r"timed out after 0\.2s"):
                lim.try_acquire("k")
            assert 0.15 < time.monotonic() - started < 5.0
        assert not sidecar.ping()
        sidecar.close()
    finally:
        listener.close()


def test_fail_open_admits_without_counting(no_server: str) -> None:
    sidecar = Sidecar(no_server, on_unavailable="fail_open")
    lim = lt.Limiter({"requests": "1/h"}, state=sidecar)
    decisions = [lim.try_acquire("k") for _ in range(3)]
    assert all(decisions)
    with lim.acquire("k") as reservation:
        reservation.commit(tokens=5)
    assert sidecar.stats["fallback_decisions"] == 4 and sidecar.stats["outages"] == 1


def test_local_fallback_enforces_the_same_limits(no_server: str) -> None:
    lim = lt.Limiter({"requests": "2/h"}, state=Sidecar(no_server, on_unavailable="local"))
    assert [bool(lim.try_acquire("k")) for _ in range(3)] == [True, True, False]
    with pytest.raises(SidecarUnavailable, match="cannot decide locally"):
        lt.Limiter(None, state=Sidecar(no_server, on_unavailable="local")).try_acquire("k")
    with pytest.raises(lt.ConfigError, match="on_unavailable"):
        Sidecar(no_server, on_unavailable="maybe")


def test_reconnects_and_reregisters_after_a_server_restart() -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = start_server(directory)
        sidecar = Sidecar(server.socket, retry_interval=0.0)
        try:
            lim = lt.Limiter({"requests": "3/h"}, state=sidecar, namespace="mine")
            held = lim.try_acquire("k")
            assert held
            server.stop()
            with pytest.raises(SidecarUnavailable):
                lim.try_acquire("k")
            held.commit()  # unreachable: logged, the reservation counts as settled
            assert held.settled
            server = start_server(directory)
            # The new server never heard of namespace "mine": the client registers it again.
            assert [bool(lim.try_acquire("k")) for _ in range(4)] == [True, True, True, False]
        finally:
            sidecar.close()
            server.stop()


def _admit_many(socket_path: str, namespace: str, attempts: int, queue: multiprocessing.Queue[int]) -> None:
    sidecar = Sidecar(socket_path)
    lim = lt.Limiter({"requests": "25/h"}, state=sidecar, namespace=namespace)
    admitted = 0
    for _ in range(attempts):
        decision = lim.try_acquire("shared-key")
        if decision:
            admitted += 1
            decision.commit()
    sidecar.close()
    queue.put(admitted)


@pytest.mark.slow
def test_processes_agree_on_one_limit(sidecar_server: ServerProcess) -> None:
    namespace = unique("multi")
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[int] = context.Queue()
    workers = [
        context.Process(target=_admit_many, args=(sidecar_server.socket, namespace, 40, queue)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    totals = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    queue.close()
    queue.join_thread()
    single = lt.Limiter({"requests": "25/h"})
    expected = sum(bool(single.try_acquire("shared-key")) for _ in range(160))
    assert sum(totals) == expected == 25


def test_a_retry_interrupted_mid_call_closes_its_connection(sidecar_server: ServerProcess) -> None:
    from llmthrottle.client.connection import ConnectionPool, _SyncConnection

    pool = ConnectionPool(sidecar_server.socket, timeout=5.0)
    stale = _SyncConnection(sidecar_server.socket, 5.0)
    stale.sock.close()  # an idle connection that died: the pool retries once on a fresh one
    pool._idle.append(stale)
    used: list[_SyncConnection] = []

    def use(connection: _SyncConnection, argument: object) -> object:
        used.append(connection)
        if connection is stale:
            raise OSError("gone")
        raise KeyboardInterrupt  # the retry is interrupted mid-read: its stream state is unknown

    with pytest.raises(KeyboardInterrupt):
        pool._run(use, None)
    assert len(used) == 2 and used[1] is not stale
    assert used[1].sock.fileno() == -1, "the interrupted retry's connection was left open"
    assert pool._idle == []
