"""`Sidecar` (a `state=` that lives in the sidecar process) and the limiter it makes.

    lim = lt.Limiter({"requests": "500/min"}, state=lt.Sidecar("/run/llmthrottle/llmthrottle.sock"))
    lim = lt.Limiter(None, state=lt.Sidecar())       # the sidecar's policy file decides

The limiter has the in-process `Limiter`'s API (`try_acquire`, `acquire`, `acquire_async`,
`peek`, `status`, `set_limits`) and adds `try_acquire_async`. Limits given here are registered
with the sidecar under the limiter's namespace; for a namespace the sidecar's policy file
defines, the file wins and the limits given here only serve the `on_unavailable="local"`
fallback. No limiter rule is evaluated here: every decision is the sidecar's engine's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from .._native import ConfigError, ExceedsCapacity
from ..budget import Budget
from ..limiter import Key, Limiter, LimitState, WaitingMixin
from ..policy import LimitsConfig, RulesConfig, normalize
from ..sidecar.config import default_socket_path
from ..sidecar.protocol import RESERVATION_ID, Op
from .connection import AsyncConnection, ConnectionPool, RemoteError, SidecarUnavailable, ignore_result
from .decision import OpenReservation, SidecarDecision, SidecarReservation

__all__ = ["Sidecar", "SidecarLimiter"]

_log = logging.getLogger("llmthrottle")
_MODES = ("fail_closed", "fail_open", "local")


class Sidecar:
    """Limiter state held by a `llmthrottle serve` process, reached over its Unix socket.

    `on_unavailable` says what a decision does while the sidecar cannot be reached:
    `"fail_closed"` raises `SidecarUnavailable` (the default: no call goes out unlimited),
    `"fail_open"` admits without counting, `"local"` decides with an in-process limiter (or
    `local_state`, e.g. a SharedState) built from the same limits. Each switch to and from
    the fallback is logged on `logging.getLogger("llmthrottle")` and counted in `stats`.
    After a failure, the socket is retried at most every `retry_interval` seconds."""

    def __init__(
        self,
        path: str | None = None,
        *,
        on_unavailable: str = "fail_closed",
        timeout: float = 2.0,
        retry_interval: float = 0.5,
        local_state: Any = None,
        max_idle_connections: int = 16,
    ) -> None:
        if on_unavailable not in _MODES:
            raise ConfigError(f"on_unavailable must be one of {', '.join(map(repr, _MODES))}, not {on_unavailable!r}")
        self.path = path or default_socket_path()
        self.on_unavailable = on_unavailable
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.local_state = local_state
        self._pool = ConnectionPool(self.path, timeout, max_idle_connections)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        # The async connection opened last: most programs run one event loop, and this spares
        # each call the lookup in `_async` (see `_open_connection`).
        self._current: AsyncConnection | None = None
        self._down_until = 0.0
        self._abandoned: list[str] = []
        self._lock = threading.Lock()
        self.stats = {"unavailable": 0, "fallback_decisions": 0, "outages": 0}

    def _make_limiter(
        self,
        *,
        limits: LimitsConfig | None,
        rules: RulesConfig | None,
        namespace: str,
        clock: Any,
        budgets: Sequence[Any] = (),
    ) -> SidecarLimiter:
        """Called by `llmthrottle.Limiter(...)` for `state=Sidecar(...)`."""
        if budgets:
            # Budgets belong to the process that keeps the ledger: the sidecar's policy file.
            raise ConfigError(
                "budgets cannot be registered through a Sidecar client yet; define them in the sidecar's policy file"
            )
        if clock is not None:
            raise ConfigError("a FakeClock cannot drive the sidecar's clock; test with the in-process state")
        return SidecarLimiter(self, limits, rules, namespace)

    # ------------------------------------------------------------------ transport

    def _call(self, request: list[Any]) -> Any:
        if self._down_until and time.monotonic() < self._down_until:
            raise SidecarUnavailable(f"the sidecar at {self.path} was unreachable moments ago")
        if self._abandoned:
            self._commit_abandoned()
        result = self._pool.call(request)
        if self._down_until:
            self._recovered()
        return result

    def _open_connection(self) -> AsyncConnection | None:
        """This event loop's connection when it is the one opened last and still open."""
        connection = self._current
        if connection is not None and not connection.closed and connection.loop is asyncio.get_running_loop():
            return connection
        return None

    async def _async_connection(self) -> AsyncConnection:
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if isinstance(entry, AsyncConnection) and not entry.closed:
            self._current = entry
            return entry
        if isinstance(entry, asyncio.Future):
            return await asyncio.shield(entry)  # another task is connecting: share its result
        if self._down_until and time.monotonic() < self._down_until:
            raise SidecarUnavailable(f"the sidecar at {self.path} was unreachable moments ago")
        opening: asyncio.Future[AsyncConnection] = loop.create_future()
        self._async[loop] = opening
        try:
            connection = await AsyncConnection.open(self.path, self.timeout)
        except BaseException as error:
            self._async.pop(loop, None)
            opening.set_exception(error)
            opening.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        self._async[loop] = self._current = connection
        opening.set_result(connection)
        if self._down_until:
            self._recovered()
        return connection

    async def _call_async(self, request: list[Any]) -> Any:
        connection = self._open_connection() or await self._async_connection()
        if self._abandoned:
            for reservation_id in self._take_abandoned():
                # Sent in the same batch as the request; nobody awaits the answer.
                connection.call([Op.COMMIT, reservation_id, {}]).add_done_callback(ignore_result)
        future = connection.call(request)
        try:
            # Once sent, the request is answered whatever happens to this task (cancelling the
            # task cancels this future, not the request).
            return await future
        except asyncio.CancelledError:
            if request[0] == Op.ACQUIRE:
                # The sidecar may admit the call after its caller gave up: give it back then.
                connection.abandon(future)
            raise

    def _take_abandoned(self) -> list[str]:
        taken = []
        while self._abandoned:
            taken.append(self._abandoned.pop())  # atomic: __del__ may append from any thread
        return taken

    def _commit_abandoned(self) -> None:
        """Commits, as reserved, the reservations dropped unsettled since the last call."""
        taken = self._take_abandoned()
        if taken:
            # Answers are ignored: an id may have expired meanwhile (UnknownReservation).
            self._pool.call_many([[Op.COMMIT, reservation_id, {}] for reservation_id in taken])

    def _note_unavailable(self, error: SidecarUnavailable, what: str) -> None:
        with self._lock:
            self.stats["unavailable"] += 1
            if not self._down_until:
                self.stats["outages"] += 1
                _log.warning(
                    "llmthrottle sidecar unavailable (%s): %s; on_unavailable=%r", what, error, self.on_unavailable
                )
            self._down_until = time.monotonic() + self.retry_interval

    def _recovered(self) -> None:
        with self._lock:
            if self._down_until:
                self._down_until = 0.0
                _log.warning("llmthrottle sidecar at %s reachable again", self.path)

    def ping(self) -> bool:
        """True when the sidecar answers."""
        try:
            self._pool.call([Op.PING])
            return True
        except SidecarUnavailable:
            return False

    def close(self) -> None:
        """Closes idle connections (they reopen on the next call)."""
        self._pool.close()
        self._current = None
        for entry in list(self._async.values()):
            if isinstance(entry, AsyncConnection):
                entry.close()

    def __repr__(self) -> str:
        return f"Sidecar({self.path!r}, on_unavailable={self.on_unavailable!r})"


def _registration_error(error: RemoteError) -> BaseException:
    if error.kind == "UnknownNamespace":
        return ConfigError(
            f"{error.message}: give this Limiter limits, or define the namespace in the sidecar's policy file"
        )
    return error


@Limiter.register
class SidecarLimiter(WaitingMixin):
    """A `Limiter` whose decisions are made by the sidecar (see the module docstring)."""

    _clock = None  # the sidecar keeps time; WaitingMixin sleeps on the real clock

    def __init__(
        self, sidecar: Sidecar, limits: LimitsConfig | None, rules: RulesConfig | None, namespace: str
    ) -> None:
        if limits is not None or rules is not None:
            normalize(limits, rules)  # the same ConfigError, at the same moment, as in-process
        self._sidecar = sidecar
        self._namespace = namespace
        self._limits = limits
        self._rules = rules
        self._registered: dict[str, Any] | None = None
        self._budgets_of: dict[str, Any] | None = None
        self._fallback: Any = None

    @property
    def dimensions(self) -> list[str]:
        """Every dimension some limit constrains (as the sidecar enforces them)."""
        return list(self._ensure_registered()["dimensions"])

    @property
    def budgets(self) -> tuple[Budget, ...]:
        """The budgets the sidecar enforces for this namespace (from its policy file)."""
        registered = self._ensure_registered()
        if self._budgets_of is not registered:
            self._budgets = tuple(Budget.from_wire(spec) for spec in registered.get("budgets", ()))
            self._budgets_of = registered
        return self._budgets

    @property
    def state(self) -> Sidecar:
        """Where the counters live: the sidecar."""
        return self._sidecar

    # ------------------------------------------------------------------ registration

    def _register_request(self) -> list[Any]:
        return [Op.REGISTER, self._namespace, self._limits, self._rules]

    def _ensure_registered(self) -> dict[str, Any]:
        if self._registered is None:
            try:
                self._registered = self._sidecar._call(self._register_request())
            except RemoteError as error:
                raise _registration_error(error) from None
        return self._registered

    def _call(self, request: list[Any]) -> Any:
        if self._registered is None:
            self._ensure_registered()
        try:
            return self._sidecar._call(request)
        except RemoteError as error:
            if error.kind != "UnknownNamespace":
                raise
        # The sidecar restarted and forgot this namespace's limits: register again, retry once.
        self._registered = None
        self._ensure_registered()
        return self._sidecar._call(request)

    async def _register_async(self) -> None:
        try:
            self._registered = await self._sidecar._call_async(self._register_request())
        except RemoteError as error:
            raise _registration_error(error) from None

    async def _call_async(self, request: list[Any]) -> Any:
        if self._registered is None:
            await self._register_async()
        try:
            return await self._sidecar._call_async(request)
        except RemoteError as error:
            if error.kind != "UnknownNamespace":
                raise
        await self._register_async()
        return await self._sidecar._call_async(request)

    # ------------------------------------------------------------------ decisions

    def _acquire_request(
        self, key: Key, requests: Any, tokens: Any, max_wait: float, amounts: dict[str, Any]
    ) -> list[Any]:
        if requests is not None:
            amounts["requests"] = requests
        if tokens is not None:
            amounts["tokens"] = tokens
        return [Op.ACQUIRE, self._namespace, key, amounts, max_wait]

    def try_acquire(
        self, key: Key, /, requests: Any = None, tokens: Any = None, *, max_wait: float = 0.0, **amounts: Any
    ) -> Any:
        """Decides at once, never blocking on limits (one round trip to the sidecar)."""
        request = self._acquire_request(key, requests, tokens, max_wait, amounts)
        try:
            result = self._call(request)
        except SidecarUnavailable as error:
            return self._unavailable(error, key, max_wait, amounts)
        return SidecarReservation(result, self) if result[RESERVATION_ID] is not None else SidecarDecision(result)

    async def try_acquire_async(
        self, key: Key, /, requests: Any = None, tokens: Any = None, *, max_wait: float = 0.0, **amounts: Any
    ) -> Any:
        """`try_acquire` without blocking the event loop; concurrent calls are pipelined."""
        request = self._acquire_request(key, requests, tokens, max_wait, amounts)
        try:
            result = await self._call_async(request)
        except SidecarUnavailable as error:
            return self._unavailable(error, key, max_wait, amounts)
        return SidecarReservation(result, self) if result[RESERVATION_ID] is not None else SidecarDecision(result)

    def try_acquire_many(self, calls: list[tuple[Key, dict[str, Any]]]) -> list[Any]:
        """Decides several calls in one round trip: `[(key, {"tokens": 10}), ...]` -> decisions
        in order (each independently admitted or denied)."""
        self._ensure_registered()
        requests = [[Op.ACQUIRE, self._namespace, key, amounts, 0.0] for key, amounts in calls]
        out = []
        for response in self._sidecar._pool.call_many(requests):
            if response[1] != 0:
                from .connection import raise_remote

                raise_remote(response[2])
            result = response[2]
            out.append(
                SidecarReservation(result, self) if result[RESERVATION_ID] is not None else SidecarDecision(result)
            )
        return out

    def peek(self, key: Key, /, requests: Any = None, tokens: Any = None, **amounts: Any) -> SidecarDecision:
        """What `try_acquire` would decide now, without charging anything."""
        if requests is not None:
            amounts["requests"] = requests
        if tokens is not None:
            amounts["tokens"] = tokens
        return SidecarDecision(self._call([Op.PEEK, self._namespace, key, amounts]))

    def status(self, key: str) -> list[LimitState]:
        """The state of `key` under each limit that applies to it."""
        return [LimitState(*entry) for entry in self._call([Op.STATUS, self._namespace, key])]

    def set_limits(self, limits: LimitsConfig | None = None, *, rules: RulesConfig | None = None) -> None:
        """Replaces this namespace's limits in the sidecar (counters carry over where a limit's
        pattern, dimension and kind are unchanged). Has no effect on a namespace the sidecar's
        policy file defines."""
        normalize(limits, rules)
        self._limits, self._rules = limits, rules
        self._registered = self._sidecar._call(self._register_request())
        self._fallback = None

    # ------------------------------------------------------------------ waiting (async)

    async def _try_async(self, key: Key, requests: Any, tokens: Any, amounts: dict[str, Any], max_wait: float) -> Any:
        """WaitingMixin's async loop asks the sidecar without blocking the event loop."""
        try:
            return await self.try_acquire_async(key, requests, tokens, max_wait=max_wait, **dict(amounts))
        except ExceedsCapacity as error:
            raise self._capacity_error(error) from error

    # ------------------------------------------------------------------ unavailability

    def _unavailable(self, error: SidecarUnavailable, key: Key, max_wait: float, amounts: dict[str, Any]) -> Any:
        sidecar = self._sidecar
        sidecar._note_unavailable(error, "decide")
        mode = sidecar.on_unavailable
        if mode == "fail_closed":
            raise SidecarUnavailable(f"{error} (on_unavailable='fail_closed': the call is not admitted)") from None
        sidecar.stats["fallback_decisions"] += 1
        if mode == "fail_open":
            return OpenReservation()
        return self._local().try_acquire(key, max_wait=max_wait, **amounts)

    def _local(self) -> Any:
        """The in-process limiter for `on_unavailable="local"`, with the same limits."""
        if self._fallback is None:
            from ..limiter import Limiter

            limits, rules = self._limits, self._rules
            if limits is None and rules is None:
                if self._registered is None:
                    raise SidecarUnavailable(
                        f"the sidecar at {self._sidecar.path} is unreachable and this limiter has no limits of "
                        "its own (Limiter(None, ...)) nor ones learnt from the sidecar: cannot decide locally"
                    )
                rules = self._registered["rules"]
            self._fallback = Limiter(limits, rules=rules, state=self._sidecar.local_state, namespace=self._namespace)
        return self._fallback

    def __repr__(self) -> str:
        config = f"rules={self._rules!r}" if self._rules is not None else repr(self._limits)
        return f"Limiter({config}, namespace={self._namespace!r}, state={self._sidecar!r})"
