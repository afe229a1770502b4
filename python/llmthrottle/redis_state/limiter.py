"""The `Limiter` that `Limiter(..., state=RedisState(...))` returns.

Which limits apply to a request, and whether its keys and amounts are valid, is decided here by
the engine's own planner (an in-process `Limiter` with the same policy, which also serves the
`on_unavailable="local"` fallback); the decision itself is decide.lua's, in Redis. A request
whose cells span several Cluster slots is decided slot by slot, in slot order, and the slots
already charged are given back when a later one denies: all or nothing, as on one host, with
the same brief window the engine documents (a racing call may be denied by capacity that is
about to be given back).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from ..limiter import Key, Limiter, LimitState, OpenReservation, WaitingMixin
from .cells import cell_name, group_by_slot, group_steps
from .leases import Lease
from .reservations import (
    LeasedReservation,
    Plan,
    RedisDecision,
    RedisReservation,
    admitted_steps,
    api_units,
    charge_marks,
    least,
)
from .script import KIND_CODES, RATE_CODES, Step, build, numbers
from .state import RedisState, RedisUnavailable

__all__ = ["RedisLimiter", "RedisDecision", "RedisReservation", "LeasedReservation"]

# (key, amounts) -> what _prepare computes is cached for this many requests
_PLAN_CACHE = 4096
_PLAIN = (int, type(None))


def _covers(lease: Lease | None, step: Step, now: float) -> bool:
    return lease is not None and lease.left >= step.amount and not lease.expired(now)


@Limiter.register
class RedisLimiter(WaitingMixin):
    """A `Limiter` whose counters live in Redis (see `RedisState`)."""

    def __init__(
        self, state: RedisState, limits: Any, rules: Any, budgets: Sequence[Any], namespace: str, clock: Any
    ) -> None:
        self._state = state
        # The engine's planner (and the in-process fallback) for this policy.
        self._planner = Limiter(limits, rules=rules, budgets=budgets, namespace=namespace, clock=clock)
        self._local: Limiter | None = None
        # (key, amounts) -> what _prepare computes: a hot key's decisions skip the planner.
        self._plans: dict[Any, tuple[tuple[str, ...], list[tuple[Plan, Step]], bool, list[Step]]] = {}
        # id(steps of a cached plan) -> its groups and calls, for the plain case (no wait, no
        # concurrency slot, the server's clock): such a request's calls never change.
        self._calls: dict[int, tuple[list[list[tuple[Plan, Step]]], list[Any]]] = {}
        self._next_sweep = 0.0
        self._clock = clock
        self._namespace = namespace
        self._limits, self._rules, self._budgets = limits, rules, tuple(budgets)

    @property
    def state(self) -> RedisState:
        """Where the counters live."""
        return self._state

    @property
    def dimensions(self) -> list[str]:
        """Every dimension some limit constrains."""
        return self._planner.dimensions

    def _instant(self) -> str:
        """The instant decide.lua should use: the server's clock, or the test's fake one."""
        if self._clock is None:
            return ""
        wall_ns = self._clock.wall_ns
        return f"{wall_ns // 1_000_000_000}:{wall_ns % 1_000_000_000}"

    # ------------------------------------------------------------------ building calls

    def _steps(self, plans: Sequence[Plan], keys: tuple[str, ...]) -> list[tuple[Plan, Step]]:
        prefix = self._state.prefix
        out = []
        for plan in plans:
            kind = KIND_CODES[plan[5]]
            extra = "1" if kind in RATE_CODES and plan[2] == 0 else "0"
            out.append(
                (plan, Step(cell_name(prefix, keys[plan[0]], plan[1]), kind, plan[6], plan[7], plan[8], plan[9], extra))
            )
        return out

    def _groups(self, steps: list[tuple[Plan, Step]]) -> list[list[tuple[Plan, Step]]]:
        return group_by_slot(steps, lambda item: item[1].cell, self._state.cluster)

    def _settle_calls(self, steps: Sequence[Step], holder: str) -> list[Any]:
        groups = group_steps(steps, self._state.cluster)
        now = self._instant()
        return [build("settle", group, now=now, holder=holder) for group in groups]

    def _commit_steps(self, reservation: RedisReservation, usage: dict[str, Any]) -> list[Step]:
        actual = dict(self._planner._usage(**usage))  # validated before anything is settled
        steps: list[Step] = []
        charged = set()
        for plan, cell, mark in reservation._charges:
            charged.add(plan[3])
            if plan[5] == "concurrency":
                steps.append(Step(cell, "c", plan[6], 0, 0, 0, ""))
                continue
            used = actual.get(plan[3])
            if used is None or used == plan[9]:
                continue
            if used > plan[9]:
                steps.append(Step(cell, KIND_CODES[plan[5]], plan[6], plan[7], plan[8], used - plan[9], ""))
            else:
                steps.append(reservation._refund(plan, cell, mark, plan[9] - used))
        uncharged = {name: usage[name] for name in usage if name not in charged and actual.get(name)}
        if uncharged:
            forced = self._planner._plan_usage(reservation._keys, **uncharged)
            steps += [step for _, step in self._steps(forced, reservation._keys)]
        return steps

    # ------------------------------------------------------------------ decisions

    def try_acquire(
        self, key: Key, /, requests: Any = None, tokens: Any = None, *, max_wait: float = 0.0, **amounts: Any
    ) -> Any:
        """Decides at once, never blocking on limits: one script call per Cluster slot the
        request's cells span (one in all on a standalone server), or none when this process
        holds a lease with room (`RedisState(leases=True)`)."""
        book = self._state.leases
        if (
            book is not None
            and not amounts
            and max_wait == 0.0
            and type(max_wait) is float
            and type(key) is str
            and type(requests) in _PLAIN
            and type(tokens) in _PLAIN
        ):
            # The local hot path: a request planned before, every step drawn from a live lease.
            cached = self._plans.get((key, requests, tokens))
            if cached is not None and cached[2]:
                now = time.monotonic()
                if now < self._next_sweep:
                    with book.lock:
                        taken = book.take_local(cached[3], now)
                    if taken is not None:
                        return LeasedReservation(self, cached[0], cached[1], taken)
        keys, steps, max_wait_ns, leasable = self._prepare(key, requests, tokens, max_wait, amounts)
        if leasable and max_wait_ns == 0 and self._state.leases is not None:
            leased = self._from_leases(keys, steps)
            if leased is not None:
                return leased
        for attempt in range(2):
            holder, groups, calls = self._acquire_calls(steps, max_wait_ns)
            results = []
            try:
                for call in calls:
                    results.append(numbers(self._state.run(call)))
                    if results[-1][0] != 1:
                        break
            except RedisUnavailable as error:
                self._give_back(groups, results, holder)
                return self._unavailable(error, key, requests, tokens, max_wait, amounts)
            decision = self._decision(keys, groups, results, holder)
            # Denied while this process holds slices of the same limits: they go back, and the
            # request is tried once more (a process never starves itself with its own leases).
            if decision or attempt or not self._state.take_back_leases([step.cell for _, step in steps]):
                return decision
        raise AssertionError("unreachable")

    async def try_acquire_async(
        self, key: Key, /, requests: Any = None, tokens: Any = None, *, max_wait: float = 0.0, **amounts: Any
    ) -> Any:
        """`try_acquire` without blocking the event loop."""
        keys, steps, max_wait_ns, leasable = self._prepare(key, requests, tokens, max_wait, amounts)
        if leasable and max_wait_ns == 0 and self._state.leases is not None:
            leased = self._from_leases(keys, steps, refill=False)  # no I/O: a refill is decided below
            if leased is not None:
                return leased
        holder, groups, calls = self._acquire_calls(steps, max_wait_ns)
        results = []
        try:
            for call in calls:
                results.append(numbers(await self._state.run_async(call)))
                if results[-1][0] != 1:
                    break
        except RedisUnavailable as error:
            self._give_back(groups, results, holder)
            return self._unavailable(error, key, requests, tokens, max_wait, amounts)
        return self._decision(keys, groups, results, holder)

    def _acquire_calls(
        self, steps: list[tuple[Plan, Step]], max_wait_ns: int
    ) -> tuple[str, list[list[tuple[Plan, Step]]], list[Any]]:
        """The holder of the request's concurrency slots, its steps by slot, and one acquire
        call per slot (in slot order: racing requests take shared slots in the same order)."""
        plain = self._calls.get(id(steps)) if max_wait_ns == 0 else None
        if plain is not None:
            return "", plain[0], plain[1]
        holder = self._state.new_holder() if any(step.kind == "c" for _, step in steps) else ""
        groups = self._groups(steps)
        now = self._instant()
        calls = [
            build(
                "acquire",
                [step for _, step in group],
                now=now,
                max_wait_ns=max_wait_ns,
                holder=holder,
                holder_ttl_ms=self._state.holder_ttl_ms,
            )
            for group in groups
        ]
        if not holder and not now and max_wait_ns == 0 and len(self._calls) < _PLAN_CACHE:
            self._calls[id(steps)] = (groups, calls)
        return holder, groups, calls

    def _prepare(
        self, key: Key, requests: Any, tokens: Any, max_wait: float, amounts: dict[str, Any]
    ) -> tuple[tuple[str, ...], list[tuple[Plan, Step]], int, bool]:
        """The request's keys, its steps, the wait allowed in ns, and whether leases may serve it
        (every step a rate limit)."""
        if max_wait == 0.0 and type(max_wait) in (float, int):
            max_wait_ns = 0
        else:
            if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)) or not max_wait >= 0:
                raise ValueError(f"max_wait must be a non-negative number of seconds, not {max_wait!r}")
            max_wait_ns = 2**62 if math.isinf(max_wait) else min(int(max_wait * 1e9), 2**62)
        if not amounts and type(key) is str and type(requests) in _PLAIN and type(tokens) in _PLAIN:
            cache_key: Any = (key, requests, tokens)  # the hot path: no bool can pass for an int here
        else:
            cache_key = (
                key if isinstance(key, str) else tuple(key),
                requests,
                type(requests),
                tokens,
                type(tokens),
                tuple((name, value, type(value)) for name, value in amounts.items()) if amounts else (),
            )
        cached = self._plans.get(cache_key)
        if cached is None:
            plans = self._planner._plan(key, requests, tokens, **amounts)
            keys = (key,) if isinstance(key, str) else tuple(key)
            steps = self._steps(plans, keys)
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.clear()
                self._calls.clear()
            leasable = bool(steps) and all(step.kind in RATE_CODES for _, step in steps)
            cached = self._plans[cache_key] = (keys, steps, leasable, [step for _, step in steps])
        return cached[0], cached[1], max_wait_ns, cached[2]

    def _give_back(self, groups: list[list[tuple[Plan, Step]]], results: list[Any], holder: str) -> None:
        """Refunds the slots a denied (or interrupted) request already charged."""
        steps = []
        for group, reply in zip(groups, results):
            if reply[0] == 1:
                for plan, step, _, _, mark in admitted_steps(group, reply):
                    steps.append(RedisReservation._refund(plan, step.cell, mark, plan[9]))
        if steps:
            self._state.settle(self._settle_calls(steps, holder))

    def _decision(
        self, keys: tuple[str, ...], groups: list[list[tuple[Plan, Step]]], results: list[Any], holder: str
    ) -> RedisDecision:
        last = results[-1] if results else [1, 0, 0]
        if last[0] != 1:
            self._give_back(groups[:-1], results[:-1], holder)
            group = groups[len(results) - 1]
            plan = group[last[2] - 1][0]
            return RedisDecision(False, retry_after=last[1] / 1e9, limited_by=plan[3], limited_key=keys[plan[0]])
        if holder:
            held = [step for group in groups for _, step in group if step.kind == "c"]
            self._state.hold(holder, held)
        return RedisReservation(self, keys, groups, results, holder)

    # ------------------------------------------------------------------ leases

    def _from_leases(
        self, keys: tuple[str, ...], steps: list[tuple[Plan, Step]], refill: bool = True
    ) -> LeasedReservation | None:
        """An admission drawn from this process's leases, taking new slices where they run
        short (when `refill`); None when a slice cannot be had (the request is then decided in
        Redis)."""
        book = self._state.leases
        assert book is not None
        now = time.monotonic()
        plain = [step for _, step in steps]
        replaced: list[Lease] = []
        with book.lock:
            taken = book.take_local(plain, now)
            if taken is not None and now < self._next_sweep:
                # The hot path: every step drawn from a live lease.
                return LeasedReservation(self, keys, steps, taken)
            if taken is None and not refill:
                return None
            if taken is None:
                short = [step for step in plain if not _covers(book.leases.get(step.cell), step, now)]
                if any(step.amount > book.cap(step) for step in short):
                    return None
                slices = [step._replace(amount=book.size_for(step, step.amount), extra="0") for step in short]
                marks = self._take_slices(slices)
                if marks is None:
                    return None
                for step, mark in zip(slices, marks):
                    old = book.replace(Lease(step.cell, step, mark, step.amount, now + book.ttl))
                    if old is not None and old.left:
                        replaced.append(old)
                taken = book.take_local(plain, now)
                assert taken is not None
        if replaced:
            self._state.give_back_leases(replaced)
        if now >= self._next_sweep:
            self._next_sweep = now + book.ttl
            self._state.return_leases(every=False)
        return LeasedReservation(self, keys, steps, taken)

    def _take_slices(self, slices: list[Step]) -> list[str] | None:
        """Charges every slice in Redis, all or nothing; their marks, or None when denied or
        Redis is unreachable (the request then takes the ordinary path)."""
        groups = group_steps(slices, self._state.cluster)
        now = self._instant()
        marks: dict[str, str] = {}
        admitted: list[tuple[list[Step], Any]] = []
        try:
            for group in groups:
                reply = numbers(self._state.run(build("acquire", group, now=now)))
                if reply[0] != 1:
                    break
                admitted.append((group, reply))
                for step, mark in zip(group, charge_marks(group, reply)):
                    marks[step.cell] = mark
        except RedisUnavailable:
            pass
        if len(admitted) == len(groups):
            return [marks[step.cell] for step in slices]
        refunds = [
            step._replace(amount=-step.amount, extra=marks[step.cell]) for group, _ in admitted for step in group
        ]
        if refunds:
            self._state.settle(self._settle_calls(refunds, ""))
        return None

    def peek(self, key: Key, /, requests: Any = None, tokens: Any = None, **amounts: Any) -> RedisDecision:
        """What `try_acquire` would decide now, without charging anything."""
        keys, steps, _, _ = self._prepare(key, requests, tokens, 0.0, amounts)
        now = self._instant()
        answers: list[tuple[Plan, Step, int, int, str]] = []
        worst: RedisDecision | None = None
        for group in self._groups(steps):
            reply = numbers(self._state.run(build("peek", [step for _, step in group], now=now)))
            if reply[0] != 1:
                plan = group[reply[2] - 1][0]
                denial = RedisDecision(False, retry_after=reply[1] / 1e9, limited_by=plan[3], limited_key=keys[plan[0]])
                if worst is None or denial.retry_after > worst.retry_after:
                    worst = denial
                continue
            answers += admitted_steps(group, reply)
        if worst is not None:
            return worst
        return RedisDecision(
            True,
            reset_after=max((answer[3] for answer in answers), default=0) / 1e9,
            remaining=least((answer[0], answer[2]) for answer in answers),
        )

    def charge(self, key: Key, /, **amounts: Any) -> None:
        """Charges usage that already happened to every limit of `key`, even past the limits
        (kept and replayed if Redis cannot take it now)."""
        keys = (key,) if isinstance(key, str) else tuple(key)
        plans = self._planner._plan_usage(key, **amounts)
        steps = [step for _, step in self._steps(plans, keys)]
        self._state.settle(self._settle_calls(steps, ""))

    def status(self, key: str) -> list[LimitState]:
        """The state of `key` under each limit that applies to it."""
        plans = self._planner._plan_status(key)
        steps = self._steps(plans, (key,))
        reply = self._state.run(build("status", [step for _, step in steps], now=self._instant()))
        out = []
        for index, (plan, _) in enumerate(steps):
            remaining, used, reset = (int(value) for value in reply[3 * index : 3 * index + 3])
            rate = KIND_CODES[plan[5]] in RATE_CODES
            out.append(
                LimitState(
                    plan[3],
                    "rate" if rate else plan[5],
                    api_units(remaining, plan[4]),
                    api_units(used, plan[4]),
                    reset / 1e9,
                    api_units(plan[8] if rate else plan[6], plan[4]),
                )
            )
        return out

    def set_limits(self, limits: Any = None, *, rules: Any = None, budgets: Sequence[Any] | None = None) -> None:
        """Replaces the limits (and the budgets, when given). The counters in Redis carry over
        for every limit whose pattern, dimension and kind stay the same, on every host."""
        self._planner.set_limits(limits, rules=rules, budgets=budgets)
        self._limits, self._rules, self._budgets = limits, rules, self._planner.budgets
        self._local = None
        self._plans.clear()
        self._calls.clear()
        if self._state.leases is not None:
            self._state.return_leases(every=True)  # slices of the old limits go back

    # ------------------------------------------------------------------ waiting (async)

    async def _try_async(self, key: Key, requests: Any, tokens: Any, amounts: dict[str, Any], max_wait: float) -> Any:
        from .._native import ExceedsCapacity

        try:
            return await self.try_acquire_async(key, requests, tokens, max_wait=max_wait, **dict(amounts))
        except ExceedsCapacity as error:
            raise self._capacity_error(error) from error

    # ------------------------------------------------------------------ unavailability

    def _unavailable(
        self, error: RedisUnavailable, key: Key, requests: Any, tokens: Any, max_wait: float, amounts: dict[str, Any]
    ) -> Any:
        mode = self._state.on_unavailable
        if mode == "fail_closed":
            raise RedisUnavailable(f"{error} (on_unavailable='fail_closed': the call is not admitted)") from None
        self._state.stats["fallback_decisions"] += 1
        if mode == "fail_open":
            return OpenReservation("Redis")
        return self._fallback().try_acquire(key, requests, tokens, max_wait=max_wait, **amounts)

    def _fallback(self) -> Limiter:
        """The in-process limiter of `on_unavailable="local"`: this limiter's policy, scaled
        to this host's share."""
        if self._local is None:
            fraction = self._state.local_fraction
            self._local = (
                self._planner
                if fraction == 1.0
                else Limiter(
                    self._limits,
                    rules=self._rules,
                    budgets=self._budgets,
                    namespace=self._namespace,
                    clock=self._clock,
                    _share=fraction,
                )
            )
        return self._local

    def __repr__(self) -> str:
        config = f"rules={self._rules!r}" if self._rules is not None else repr(self._limits)
        return f"Limiter({config}, namespace={self._namespace!r}, state={self._state!r})"
