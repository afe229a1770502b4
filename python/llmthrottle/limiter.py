"""`Limiter`: the public face of the engine, with blocking and async acquisition."""

from __future__ import annotations

import collections.abc
import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar, cast

from . import _native
from ._native import (
    BudgetExceeded,
    Decision,
    ExceedsCapacity,
    FakeClock,
    InProcessState,
    LlmthrottleError,
    RateLimited,
    Reservation,
)
from .budget import BUDGET_DIMENSION, Budget, budget_for
from .policy import LimitsConfig, RulesConfig, normalize

__all__ = [
    "Limiter",
    "LimitState",
    "Key",
    "WaitingMixin",
    "AsyncAcquire",
    "SettlesOnExit",
    "OpenReservation",
    "describe",
]

Key = str | Sequence[str]
_Settling = TypeVar("_Settling", bound="SettlesOnExit")

# While a concurrency cap denies (it frees up on a release, not at a known time), waiters poll
# with a backoff between these bounds.
_POLL_MIN_S = 0.0005
_POLL_MAX_S = 0.05


class LimitState(NamedTuple):
    """One key's state under one limit."""

    dimension: str
    kind: str  # "rate" | "concurrency" | "quota"
    remaining: int | float
    used: int | float
    reset_after: float
    capacity: int | float


class SettlesOnExit:
    """What every reservation made outside the engine (the sidecar's, Redis's) shares with the
    engine's `Reservation`: settled once (a second commit or cancel raises), and as a context
    manager it cancels when the block raises and commits as reserved otherwise (unless settled
    already). The class mixing it in keeps `_settled`."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by the class this is mixed into
        _settled: bool

        def commit(self, **usage: Any) -> None: ...
        def cancel(self) -> None: ...

    @property
    def settled(self) -> bool:
        """True once committed or cancelled."""
        return self._settled

    def _begin(self) -> None:
        """Marks the reservation settled; raises if it already was."""
        if self._settled:
            raise LlmthrottleError("this reservation was already committed or cancelled")
        self._settled = True  # type: ignore[misc]  # a slot of the class mixing this in

    def __enter__(self: _Settling) -> _Settling:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if not self._settled:
            if exc_type is None:
                self.commit()
            else:
                self.cancel()
        return False


class OpenReservation(SettlesOnExit):
    """What `on_unavailable="fail_open"` admits with while the state (the sidecar, Redis) is
    unreachable: an admission nothing counted, so settling it does nothing."""

    allowed = True
    retry_after = delay = reset_after = 0.0
    limited_by: str | None = None
    limited_key: str | None = None

    def __init__(self, unavailable: str = "sidecar") -> None:
        self.remaining: dict[str, Any] = {}
        self.reserved: dict[str, Any] = {}
        self._unavailable = unavailable
        self._settled = False

    def __bool__(self) -> bool:
        return True

    def commit(self, **usage: Any) -> None:
        self._settled = True

    def cancel(self) -> None:
        self._settled = True

    async def commit_async(self, **usage: Any) -> None:
        self._settled = True

    async def cancel_async(self) -> None:
        self._settled = True

    def __repr__(self) -> str:
        return f"<Decision admitted ({self._unavailable} unavailable, fail_open)>"


def describe(decision: Any) -> str:
    """The repr of a decision: `<Decision denied limited_by='tokens' key='k' retry_after=...>`."""
    text = f"<Decision {'admitted' if decision.allowed else 'denied'}"
    if decision.limited_by is not None:
        text += (
            f" limited_by={decision.limited_by!r} key={decision.limited_key!r} retry_after={decision.retry_after:.6f}"
        )
    if decision.delay > 0:
        text += f" delay={decision.delay:.6f}"
    return text + ">"


def _budget_exceeded(decision: Decision, budget: Budget | None) -> BudgetExceeded:
    label = budget.label if budget is not None else "a budget"
    error = BudgetExceeded(
        f"{label!s} has no room for this call (key {decision.limited_key!r}); it resets in {decision.retry_after:.0f}s"
    )
    error.budget = budget
    error.key = decision.limited_key
    error.retry_after = decision.retry_after
    error.downgrade_to = budget.downgrade_to if budget is not None else None
    return error


def _over_budget(error: ExceedsCapacity, budget: Budget | None) -> BudgetExceeded:
    exceeded = BudgetExceeded(f"{budget.label if budget else 'a budget'}: {error}")
    exceeded.budget = budget
    exceeded.key = error.key
    exceeded.retry_after = float("inf")
    exceeded.downgrade_to = budget.downgrade_to if budget is not None else None
    return exceeded


def _rate_limited(decision: Decision, timeout: float | None) -> RateLimited:
    waited = "" if timeout is None else f" within {timeout:g}s"
    error = RateLimited(
        f"not admitted{waited}: limited by {decision.limited_by!r} for key "
        f"{decision.limited_key!r}; retry after {decision.retry_after:.3f}s"
    )
    error.retry_after = decision.retry_after
    error.limited_by = decision.limited_by
    error.key = decision.limited_key
    return error


class WaitingMixin:
    """Blocking and async acquisition on top of `try_acquire(..., max_wait=...)`, and the
    configuration every limiter reports.

    Shared by every limiter implementation (in-process, shared memory, sidecar client): a
    class needs `try_acquire` and the attributes below."""

    _clock: FakeClock | None
    _budgets: tuple[Budget, ...] = ()
    _namespace: str
    _limits: LimitsConfig | None
    _rules: RulesConfig | None

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def budgets(self) -> tuple[Budget, ...]:
        """The budgets this limiter enforces (on the `budget_usd` dimension)."""
        return self._budgets

    @property
    def limits(self) -> LimitsConfig | None:
        """The limits mapping given for every key (None when configured by `rules`)."""
        return self._limits

    @property
    def rules(self) -> RulesConfig | None:
        """The per-pattern rules (None when configured by `limits`)."""
        return self._rules

    if TYPE_CHECKING:  # provided by the class this is mixed into

        def try_acquire(
            self, key: Key, /, requests: Any = None, tokens: Any = None, *, max_wait: float = 0.0, **amounts: Any
        ) -> Decision: ...

    def _sleep(self, seconds: float) -> None:
        if self._clock is not None:
            self._clock.advance(seconds)
        else:
            time.sleep(seconds)

    def _now(self) -> float:
        return self._clock.monotonic if self._clock is not None else time.monotonic()

    def _max_wait(self, deadline: float | None) -> float:
        return float("inf") if deadline is None else max(0.0, deadline - self._now())

    def _try(self, key: Key, requests: Any, tokens: Any, amounts: dict[str, Any], max_wait: float) -> Decision:
        """One `try_acquire`; a budget asked for more than it will ever hold is `BudgetExceeded`."""
        try:
            return self.try_acquire(key, requests, tokens, max_wait=max_wait, **amounts)
        except ExceedsCapacity as error:
            raise self._capacity_error(error) from error

    async def _try_async(
        self, key: Key, requests: Any, tokens: Any, amounts: dict[str, Any], max_wait: float
    ) -> Decision:
        """`_try` for the async loop; a limiter whose decisions cross a socket overrides it."""
        return self._try(key, requests, tokens, amounts, max_wait)

    def _capacity_error(self, error: ExceedsCapacity) -> Exception:
        if error.dimension != BUDGET_DIMENSION:
            return error
        # More than a whole budget: no period will ever have room for it.
        return _over_budget(error, budget_for(self.budgets, error.key))

    def _judge(self, decision: Decision, max_wait: float, deadline: float | None) -> tuple[Reservation | None, float]:
        """The reservation (maybe with a delay to honour), or None and how long to wait before
        the next try. Raises RateLimited / BudgetExceeded when the deadline cannot be met."""
        if decision:
            return decision, decision.delay  # type: ignore[return-value]
        if decision.limited_by == BUDGET_DIMENSION:
            budget = budget_for(self.budgets, decision.limited_key or "")
            queue = budget is not None and budget.on_exceed == "queue"
            if not queue or decision.retry_after > max_wait:
                raise _budget_exceeded(decision, budget)
        if decision.limited_by != "concurrency" and decision.retry_after > max_wait:
            raise _rate_limited(decision, None if deadline is None else max_wait)
        if deadline is not None and max_wait <= 0:
            raise _rate_limited(decision, 0.0)
        return None, min(max(decision.retry_after, _POLL_MIN_S), max_wait)

    def acquire(
        self,
        key: Key,
        /,
        requests: int | None = None,
        tokens: int | None = None,
        *,
        timeout: float | None = None,
        queue: bool = True,
        **amounts: Any,
    ) -> Reservation:
        """Waits until the call is admitted and returns its `Reservation` (also a context
        manager: cancelled if the block raises). Rate limits queue the call in arrival order
        (`queue=False`: it holds no place in line and tries again until there is room, so
        that refunds made meanwhile shorten its wait, as with limits whose refunds come back
        whole); a concurrency cap is waited on until a slot frees. Raises `RateLimited` at once
        when the call cannot be admitted within `timeout` seconds (None: wait as long as
        needed), and `BudgetExceeded` when a budget has no room (a `"queue"` budget waits for
        its next period instead, within the timeout)."""
        deadline = None if timeout is None else self._now() + _check_timeout(timeout)
        poll = _POLL_MIN_S
        max_wait = self._max_wait(deadline)
        decision = self._try(key, requests, tokens, amounts, max_wait if queue else 0.0)
        if decision and not decision.delay:  # admitted at once, as most calls are
            return decision  # type: ignore[return-value]
        while True:
            reservation, wait = self._judge(decision, max_wait, deadline)
            if reservation is not None:
                if wait > 0:
                    try:
                        self._sleep(wait)
                    except BaseException:
                        reservation.cancel()
                        raise
                return reservation
            self._sleep(min(wait, poll) if wait > _POLL_MIN_S else wait)
            poll = min(poll * 2, _POLL_MAX_S)
            max_wait = self._max_wait(deadline)
            decision = self._try(key, requests, tokens, amounts, max_wait if queue else 0.0)

    def acquire_async(
        self,
        key: Key,
        /,
        requests: int | None = None,
        tokens: int | None = None,
        *,
        timeout: float | None = None,
        queue: bool = True,
        **amounts: Any,
    ) -> AsyncAcquire:
        """`acquire` for asyncio: `r = await lim.acquire_async(...)`, or
        `async with lim.acquire_async(...) as r:`. Cancelling the task while it waits gives
        the reservation back."""
        return AsyncAcquire(self, key, requests, tokens, timeout, amounts, queue)

    async def _acquire_async(
        self, key: Key, requests: Any, tokens: Any, timeout: float | None, amounts: dict[str, Any], queue: bool = True
    ) -> Reservation:
        deadline = None if timeout is None else self._now() + _check_timeout(timeout)
        poll = _POLL_MIN_S
        max_wait = self._max_wait(deadline)
        decision = await self._try_async(key, requests, tokens, amounts, max_wait if queue else 0.0)
        if decision and not decision.delay:  # admitted at once, as most calls are
            return decision  # type: ignore[return-value]
        while True:
            reservation, wait = self._judge(decision, max_wait, deadline)
            if reservation is not None:
                if wait > 0:
                    try:
                        await self._sleep_async(wait)
                    except BaseException:
                        reservation.cancel()
                        raise
                return reservation
            await self._sleep_async(min(wait, poll) if wait > _POLL_MIN_S else wait)
            poll = min(poll * 2, _POLL_MAX_S)
            max_wait = self._max_wait(deadline)
            decision = await self._try_async(key, requests, tokens, amounts, max_wait if queue else 0.0)

    async def _sleep_async(self, seconds: float) -> None:
        if self._clock is not None:
            self._clock.advance(seconds)
            import asyncio

            await asyncio.sleep(0)
        else:
            import asyncio

            await asyncio.sleep(seconds)


class _LimiterType(type):
    """Makes `isinstance(x, Limiter)` true of every limiter `Limiter(...)` can return,
    including those a state brings along (the sidecar's), which share the API but not the
    native base. Only `Limiter` itself accepts registered implementations, not its subclasses."""

    def register(cls, implementation: type) -> type:
        cls._registered = (*cls.__dict__.get("_registered", ()), implementation)
        return implementation

    def __instancecheck__(cls, instance: Any) -> bool:
        return type.__instancecheck__(cls, instance) or isinstance(instance, cls.__dict__.get("_registered", ()))

    def __subclasscheck__(cls, subclass: type) -> bool:
        return type.__subclasscheck__(cls, subclass) or issubclass(subclass, cls.__dict__.get("_registered", ()))


class Limiter(WaitingMixin, _native.Limiter, metaclass=_LimiterType):
    """Limits requests, tokens, cost and concurrency per key.

    >>> lim = Limiter({"requests": "500/min", "tokens": "30k/min", "concurrency": 20})
    >>> d = lim.try_acquire("tenant:acme", tokens=1200)      # never blocks
    >>> with lim.acquire("tenant:acme", tokens=1200, timeout=5.0) as r:
    ...     r.commit(tokens=913)                              # reconcile with real usage

    `limits` applies to every key; `rules` maps key patterns (`"user:*"`) to limits, first
    match wins (see `llmthrottle.policy`); `budgets` (`llmthrottle.Budget`) cap spending in
    dollars per key pattern, on the `budget_usd` dimension. `state` is where the counters live: in this process
    (default), `SharedState` for every process on the host, `RedisState` for every host, or
    `Sidecar`. Limiters with the same
    `namespace`, pattern and dimension on one state share their counters.
    """

    def __new__(
        cls,
        limits: LimitsConfig | None = None,
        *,
        rules: RulesConfig | None = None,
        budgets: Sequence[Budget] = (),
        state: Any | None = None,
        namespace: str = "default",
        clock: FakeClock | None = None,
        _share: float = 1.0,
    ) -> Limiter:
        make = getattr(state, "_make_limiter", None)
        if make is not None:
            # A state that is not in this process (the sidecar) brings its own implementation.
            return make(limits=limits, rules=rules, budgets=budgets, namespace=namespace, clock=clock)  # type: ignore[no-any-return]
        canonical = normalize(limits, rules, budgets)
        if state is None:
            state = InProcessState()
        # `_share` scales every limit to one host's part of a fleet's (a Redis state's local
        # fallback uses it).
        self = cast(
            "Limiter", super().__new__(cls, canonical, namespace=namespace, state=state, clock=clock, share=_share)
        )
        self._budgets = tuple(budgets)
        self._namespace = namespace
        self._state = state
        self._clock = clock
        self._limits = limits
        self._rules = rules
        return self

    _state: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Everything is set up by `__new__` (the native base is immutable once built)."""

    @property
    def state(self) -> Any:
        """Where the counters live (an InProcessState, SharedState, ...)."""
        return self._state

    def set_limits(
        self,
        limits: LimitsConfig | None = None,
        *,
        rules: RulesConfig | None = None,
        budgets: Sequence[Budget] | None = None,
    ) -> None:
        """Replaces the limits (and the budgets, when given) at runtime. Counters carry over
        for every limit whose pattern, dimension and kind stay the same: a new burst applies to
        the current level at once, and a new rate refills from the current level at the new
        pace; a budget keeps what was spent. Meant for configuration changes, not per call:
        decisions read the policy without locking, so every replaced policy (a few KB) stays
        allocated until the limiter is dropped."""
        new_budgets = self._budgets if budgets is None else tuple(budgets)
        self._set_rules(normalize(limits, rules, new_budgets), self._namespace)
        self._limits, self._rules, self._budgets = limits, rules, new_budgets

    def status(self, key: str) -> list[LimitState]:  # type: ignore[override]
        """The state of `key` under each limit that applies to it."""
        return [LimitState(*entry) for entry in super().status(key)]

    def __repr__(self) -> str:
        config = f"rules={self._rules!r}" if self._rules is not None else repr(self._limits)
        return f"Limiter({config}, namespace={self._namespace!r})"


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be a non-negative number of seconds or None, not {timeout!r}")
    return float(timeout)


class AsyncAcquire(collections.abc.Coroutine):  # type: ignore[type-arg]
    """What `Limiter.acquire_async` returns: await it, use it with `async with`, or hand it to
    `asyncio.create_task` / `gather` like any coroutine."""

    __slots__ = ("_limiter", "_args", "_reservation", "_coroutine")

    def __init__(
        self,
        limiter: WaitingMixin,
        key: Key,
        requests: Any,
        tokens: Any,
        timeout: float | None,
        amounts: dict[str, Any],
        queue: bool = True,
    ) -> None:
        self._limiter = limiter
        self._args = (key, requests, tokens, timeout, amounts, queue)
        self._reservation: Reservation | None = None
        self._coroutine: Any = None

    def _started(self) -> Any:
        if self._coroutine is None:
            self._coroutine = self._limiter._acquire_async(*self._args)
        return self._coroutine

    def __await__(self) -> Generator[Any, None, Reservation]:
        return self._started().__await__()  # type: ignore[no-any-return]

    # The coroutine protocol, so that asyncio.create_task accepts it.
    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, *args: Any) -> Any:
        return self._started().throw(*args)

    def close(self) -> None:
        if self._coroutine is not None:
            self._coroutine.close()

    async def __aenter__(self) -> Reservation:
        self._reservation = await self._limiter._acquire_async(*self._args)
        return self._reservation

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._reservation is not None
        self._reservation.__exit__(exc_type, exc, tb)
