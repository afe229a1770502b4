"""What a decision on Redis returns: `RedisDecision` (a denial, or a peek), `RedisReservation`
(an admission whose charges are held in Redis) and `LeasedReservation` (an admission drawn from
this process's leases), and the reading of decide.lua's replies they share."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..limiter import SettlesOnExit, describe
from .leases import Lease
from .script import KIND_CODES, RATE_CODES, Step

if TYPE_CHECKING:
    from .limiter import RedisLimiter

__all__ = [
    "LeasedReservation",
    "Plan",
    "RedisDecision",
    "RedisReservation",
    "admitted_steps",
    "api_units",
    "charge_marks",
    "least",
]

# A planned step: (key_index, label, layer, dimension, units_per_api_unit, kind, a, b, c, amount)
Plan = tuple[int, str, int, str, int, str, int, int, int, int]


def admitted_steps(
    group: Sequence[tuple[Plan, Step]], reply: Sequence[Any]
) -> Iterator[tuple[Plan, Step, int, int, str]]:
    """(plan, step, remaining, reset_ns, mark) of each step of an admitting acquire or peek
    reply."""
    for index, ((plan, step), mark) in enumerate(zip(group, charge_marks([step for _, step in group], reply))):
        yield plan, step, reply[4 + 3 * index], reply[5 + 3 * index], mark


def charge_marks(steps: Sequence[Step], reply: Sequence[Any]) -> list[str]:
    """Each step's mark, as a refund needs it: a rate charge's end (the server's instant in the
    reply plus the charge's cost), a quota charge's period index."""
    now_ns = reply[2] * 1_000_000_000 + reply[3]
    out = []
    for index, step in enumerate(steps):
        if step.kind in RATE_CODES:
            end = now_ns + step.amount * step.a
            out.append(f"{end // 1_000_000_000}:{end % 1_000_000_000}")
        else:
            out.append(str(reply[6 + 3 * index]) if step.kind == "q" else "")
    return out


def api_units(value: int, scale: int) -> int | float:
    return value if scale == 1 else value / scale


def least(values: Iterable[tuple[Plan, int]]) -> dict[str, int | float]:
    """For each dimension, the least of `values` (in the API's units): what is left over keys."""
    out: dict[str, int | float] = {}
    for plan, value in values:
        amount = api_units(value, plan[4])
        if out.get(plan[3], amount) >= amount:
            out[plan[3]] = amount
    return out


def _reserved(plans: Iterable[Plan]) -> dict[str, int | float]:
    """For each dimension, the largest amount reserved over keys (in the API's units)."""
    out: dict[str, int | float] = {}
    for plan in plans:
        amount = api_units(plan[9], plan[4])
        if amount > out.get(plan[3], 0):
            out[plan[3]] = amount
    return out


class RedisDecision:
    """What Redis decided. Truthy when the call was admitted."""

    __slots__ = ("allowed", "retry_after", "delay", "reset_after", "limited_by", "limited_key", "remaining")

    def __init__(
        self,
        allowed: bool,
        retry_after: float = 0.0,
        delay: float = 0.0,
        reset_after: float = 0.0,
        limited_by: str | None = None,
        limited_key: str | None = None,
        remaining: dict[str, int | float] | None = None,
    ) -> None:
        self.allowed = allowed
        self.retry_after = retry_after
        self.delay = delay
        self.reset_after = reset_after
        self.limited_by = limited_by
        self.limited_key = limited_key
        self.remaining = remaining if remaining is not None else {}

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        return describe(self)


class RedisReservation(SettlesOnExit, RedisDecision):
    """An admitted call whose charges are held in Redis. `commit(**usage)` reconciles it with
    real usage, `cancel()` refunds it; as a context manager it cancels when the block raises
    and commits as reserved otherwise. Dropped unsettled, it keeps its charges and its
    concurrency slots are released with the state's next call (or lapse after `holder_ttl`
    if that never comes)."""

    __slots__ = ("_limiter", "_keys", "_groups", "_replies", "_holder", "_settled")

    def __init__(
        self,
        limiter: RedisLimiter,
        keys: tuple[str, ...],
        groups: list[list[tuple[Plan, Step]]],
        replies: list[Any],
        holder: str,
    ) -> None:
        # Only what waiting needs is read now; the rest of the replies is read when asked for.
        self.allowed = True
        self.retry_after = 0.0
        self.limited_by = self.limited_key = None
        self.delay = (replies[0][1] if len(replies) == 1 else max((reply[1] for reply in replies), default=0)) / 1e9
        self._limiter = limiter
        self._keys = keys
        self._groups = groups
        self._replies = replies
        self._holder = holder
        self._settled = False

    def _per_step(self) -> Iterator[tuple[Plan, Step, Any, Any, Any]]:
        """(plan, step, remaining, reset_ns, mark) of every step, as Redis answered."""
        for group, reply in zip(self._groups, self._replies):
            yield from admitted_steps(group, reply)

    @property
    def _charges(self) -> list[tuple[Plan, str, str]]:
        """(plan, cell, mark) of every charge."""
        return [(plan, step.cell, mark) for plan, step, _, _, mark in self._per_step()]

    @property
    def remaining(self) -> dict[str, int | float]:  # type: ignore[override]
        """For each dimension charged: what is left, the least over keys."""
        return least((plan, left) for plan, _, left, _, _ in self._per_step())

    @property
    def reset_after(self) -> float:  # type: ignore[override]
        """Seconds until every limit the call touched is back to full."""
        return max((reset for _, _, _, reset, _ in self._per_step()), default=0) / 1e9

    @property
    def reserved(self) -> dict[str, int | float]:
        """The amount reserved in each dimension (the largest over keys)."""
        return _reserved(plan for group in self._groups for plan, _ in group)

    def _begin(self) -> None:
        super()._begin()
        if self._holder:
            self._limiter._state.release(self._holder)

    def commit(self, **usage: Any) -> None:
        """Reconciles with real usage, e.g. `commit(tokens=913)`: less than reserved is
        refunded, more is charged (even past the limit: it was used). Unnamed dimensions keep
        what was reserved."""
        steps = self._limiter._commit_steps(self, usage)
        self._begin()
        self._limiter._state.settle(self._limiter._settle_calls(steps, self._holder))

    def cancel(self) -> None:
        """The call never happened: refunds everything and releases concurrency slots."""
        self._begin()
        steps = [self._refund(plan, cell, mark, plan[9]) for plan, cell, mark in self._charges]
        self._limiter._state.settle(self._limiter._settle_calls(steps, self._holder))

    async def commit_async(self, **usage: Any) -> None:
        """`commit` without blocking the event loop."""
        await asyncio.to_thread(self.commit, **usage)

    async def cancel_async(self) -> None:
        """`cancel` without blocking the event loop."""
        await asyncio.to_thread(self.cancel)

    @staticmethod
    def _refund(plan: Plan, cell: str, mark: str, amount: int) -> Step:
        return Step(cell, KIND_CODES[plan[5]], plan[6], plan[7], plan[8], -amount, mark)

    def __del__(self) -> None:
        # Like the engine's Reservation, one dropped unsettled keeps its charges and gives its
        # concurrency slots back (with the state's next call: a finaliser does no I/O).
        if not getattr(self, "_settled", True) and self._holder:
            self._limiter._state.abandon(self._holder)


class LeasedReservation(SettlesOnExit):
    """An admission drawn from this process's leases (the Reservation API): settling it gives
    unused units back to the lease while it lasts and charges usage above the reservation in
    Redis. `remaining` is what is left of this process's slices; nothing is held in flight, so
    one dropped unsettled simply keeps its charge."""

    __slots__ = ("_limiter", "_keys", "_steps", "_leases", "_settled")
    allowed = True
    retry_after = delay = reset_after = 0.0
    limited_by: str | None = None
    limited_key: str | None = None

    def __init__(
        self, limiter: RedisLimiter, keys: tuple[str, ...], steps: list[tuple[Plan, Step]], leases: list[Lease]
    ) -> None:
        self._limiter = limiter
        self._keys = keys
        self._steps = steps
        self._leases = leases
        self._settled = False

    def __bool__(self) -> bool:
        return True

    @property
    def remaining(self) -> dict[str, int | float]:
        return least((plan, lease.left) for (plan, _), lease in zip(self._steps, self._leases))

    @property
    def reserved(self) -> dict[str, int | float]:
        return _reserved(plan for plan, _ in self._steps)

    def commit(self, **usage: Any) -> None:
        """Reconciles with real usage (see `RedisReservation.commit`)."""
        limiter = self._limiter
        actual = dict(limiter._planner._usage(**usage))
        self._begin()
        extra: list[Step] = []
        unused: list[tuple[Lease, int]] = []
        for (plan, _), lease in zip(self._steps, self._leases):
            used = actual.get(plan[3])
            if used is None or used == plan[9]:
                continue
            if used < plan[9]:
                unused.append((lease, plan[9] - used))
            else:
                extra.append(lease.step._replace(amount=used - plan[9], extra=""))
        limiter._state.unuse(unused)
        charged = {plan[3] for plan, _ in self._steps}
        uncharged = {name: usage[name] for name in usage if name not in charged and actual.get(name)}
        if uncharged:
            forced = limiter._planner._plan_usage(self._keys, **uncharged)
            extra += [step for _, step in limiter._steps(forced, self._keys)]
        if extra:
            limiter._state.settle(limiter._settle_calls(extra, ""))

    def cancel(self) -> None:
        """The call never happened: its units go back to the lease."""
        self._begin()
        self._limiter._state.unuse([(lease, plan[9]) for (plan, _), lease in zip(self._steps, self._leases)])

    async def commit_async(self, **usage: Any) -> None:
        """`commit` without blocking the event loop."""
        await asyncio.to_thread(self.commit, **usage)

    async def cancel_async(self) -> None:
        """`cancel` (local: nothing to wait for)."""
        self.cancel()

    def __repr__(self) -> str:
        return "<Decision admitted (from this process's lease)>"
