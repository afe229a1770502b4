"""`Guard`: one LLM call, admitted against limits and budgets, priced, and recorded.

    guard = lt.Guard(limiter, ledger=lt.Ledger("usage/"))
    with guard.call(["user:1", "team:a", "org:acme"], model="gpt-4o",
                    input_tokens=1200, max_output_tokens=500, feature="chat") as call:
        response = client.chat.completions.create(model=call.model, ...)
        call.finish(response.usage)

Admission charges the worst case (estimated input plus the whole output reservation, priced)
against every budget on the call's keys; `finish` reconciles with the real usage, records the
call in the ledger and fires budget thresholds once per period.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._native import BudgetExceeded, InProcessState, Reservation, rolling_undrained
from .budget import BUDGET_DIMENSION, Budget, budget_for, exact_dollars
from .ledger import Ledger
from .ledger.call import KEY_FIELDS, RECORD_COLUMNS, call_record, unfinished_record
from .ledger.store import MAX_COST_MICROS
from .limiter import Key, Limiter
from .pricing import Cost, PriceTable
from .pricing.usage import limited_input_tokens
from .tokens import estimate

__all__ = ["Guard", "GuardedCall", "ThresholdEvent"]


@dataclass(frozen=True)
class ThresholdEvent:
    """A budget's spend reached `threshold` (a fraction) of its limit for `key`."""

    budget: Budget
    key: str
    threshold: float
    spent_usd: float
    limit_usd: float


class Guard:
    """Limits, budgets, pricing and the usage ledger around LLM calls.

    `limiter` holds the rate limits and budgets (`Limiter(..., budgets=[...])`); dimensions it
    does not limit are not sent to it. A call given its request `body` is counted before it
    leaves, exactly or (`exact_tokens=False`) with the fast estimator. `prices` defaults to the shipped table. With a
    `ledger`, every finished call is recorded; and when the limiter's state lives in this
    process, budget spend of the current periods is rebuilt from the ledger at start, so a
    restart does not forget what was spent.
    """

    def __init__(
        self,
        limiter: Limiter,
        *,
        prices: PriceTable | None = None,
        ledger: Ledger | None = None,
        on_threshold: Callable[[ThresholdEvent], None] | None = None,
        rebuild_from_ledger: bool | None = None,
        exact_tokens: bool = True,
    ) -> None:
        self.limiter = limiter
        self.exact_tokens = exact_tokens
        self.prices = prices if prices is not None else PriceTable.default()
        self.ledger = ledger
        self.on_threshold = on_threshold
        self._marks = self._threshold_limiter(limiter)
        if rebuild_from_ledger is None:
            rebuild_from_ledger = ledger is not None and isinstance(limiter.state, InProcessState)
        if rebuild_from_ledger:
            self.rebuild_from_ledger()

    @staticmethod
    def _threshold_limiter(limiter: Limiter) -> Limiter | None:
        """One quota of 1 per budget period and threshold: the first call to cross a threshold
        takes it, so a threshold fires once per period, across every process sharing state."""
        rules: dict[str, dict[str, Any]] = {}
        for budget in limiter.budgets:
            # A quota's period is an hour at least: a shorter rolling budget fires each
            # threshold at most once an hour.
            period = budget.period if budget.calendar or budget.window_s >= 3600 else "1h"
            rules[budget.scope] = {f"t{round(t * 1000)}": {"quota": 1, "per": period} for t in budget.thresholds} or {
                "t0": {"quota": 1, "per": period}
            }
        if not rules:
            return None
        return Limiter(
            rules=rules,
            state=limiter.state,
            namespace=f"{limiter.namespace}.thresholds",
            clock=limiter._clock,
        )

    def _amounts(self, model: str, input_tokens: int, max_output_tokens: int, provider: str | None) -> dict[str, Any]:
        """The request's amounts in every dimension the limiter knows: tokens and worst-case cost."""
        dims = set(self.limiter.dimensions)
        candidates: dict[str, Any] = {
            "tokens": input_tokens + max_output_tokens,
            "input_tokens": input_tokens,
            "output_tokens": max_output_tokens,
        }
        if "cost_usd" in dims or BUDGET_DIMENSION in dims:  # priced only where money is limited
            worst = exact_dollars(self.prices.worst_case_cost(model, input_tokens, max_output_tokens, provider))
            candidates["cost_usd"] = candidates[BUDGET_DIMENSION] = worst
        else:
            self.prices.resolve(model, provider)  # a model without a price is refused before it is sent
        return {name: value for name, value in candidates.items() if name in dims}

    def _sizes(
        self,
        model: str | None,
        body: Mapping[str, Any] | None,
        input_tokens: int | None,
        max_output_tokens: int | None,
        provider: str | None,
    ) -> tuple[str, tuple[int, int, str | None]]:
        """The model and (input, output reservation, provider) of a call, counted from `body`
        where the caller did not give them."""
        if body is not None:
            family: Literal["openai", "anthropic"] = "anthropic" if provider == "anthropic" else "openai"
            counted = estimate(body, family, model, exact=self.exact_tokens)
            model = model or body.get("model")
            input_tokens = counted.input_tokens if input_tokens is None else input_tokens
            max_output_tokens = counted.max_output_tokens if max_output_tokens is None else max_output_tokens
        if not isinstance(model, str) or not model:
            raise ValueError("model is required: pass model= or a body that names it")
        return model, (input_tokens or 0, max_output_tokens or 0, provider)

    def call(
        self,
        keys: Key,
        *,
        model: str | None = None,
        body: Mapping[str, Any] | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        provider: str | None = None,
        timeout: float | None = None,
        downgrade: bool = True,
        **tags: Any,
    ) -> GuardedCall:
        """Waits until the call is admitted (see `Limiter.acquire`) and returns it. The call's
        size is `input_tokens` and `max_output_tokens`, or counted from the request `body`
        (an OpenAI or, with `provider="anthropic"`, Anthropic body). A budget with
        `on_exceed="downgrade"` retries once with its cheaper model; `call.model` is the model
        to use (with `downgrade=False`, for a caller that cannot send another model, it refuses
        as `"reject"` does). Raises `BudgetExceeded`, `RateLimited` or `ExceedsCapacity`."""
        key_list = [keys] if isinstance(keys, str) else list(keys)
        model, sizes = self._sizes(model, body, input_tokens, max_output_tokens, provider)
        try:
            reservation = self.limiter.acquire(key_list, timeout=timeout, **self._amounts(model, *sizes))
        except BudgetExceeded as exceeded:
            if not downgrade:
                raise
            model = _downgrade(exceeded, model)
            reservation = self.limiter.acquire(key_list, timeout=timeout, **self._amounts(model, *sizes))
        return GuardedCall(self, reservation, key_list, model, sizes[:2], provider, tags)

    def record_unadmitted(
        self,
        keys: Key,
        *,
        model: str,
        provider: str | None = None,
        outcome: str,
        latency_s: float | None = None,
        **tags: Any,
    ) -> None:
        """Records, at $0 and without admitting it, a call answered without reaching a provider
        (outcome `cache_hit`: served by the response cache), built like every other record."""
        if self.ledger is None:
            return
        key_list = [keys] if isinstance(keys, str) else list(keys)
        self.ledger.record(
            **call_record(
                key_list, outcome=outcome, latency_s=latency_s, tags=tags, model=model, provider=provider, cost_micros=0
            )
        )

    async def call_async(
        self,
        keys: Key,
        *,
        model: str | None = None,
        body: Mapping[str, Any] | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        provider: str | None = None,
        timeout: float | None = None,
        downgrade: bool = True,
        **tags: Any,
    ) -> GuardedCall:
        """`call` for asyncio."""
        key_list = [keys] if isinstance(keys, str) else list(keys)
        model, sizes = self._sizes(model, body, input_tokens, max_output_tokens, provider)
        try:
            reservation = await self.limiter.acquire_async(key_list, timeout=timeout, **self._amounts(model, *sizes))
        except BudgetExceeded as exceeded:
            if not downgrade:
                raise
            model = _downgrade(exceeded, model)
            reservation = await self.limiter.acquire_async(key_list, timeout=timeout, **self._amounts(model, *sizes))
        return GuardedCall(self, reservation, key_list, model, sizes[:2], provider, tags)

    def rebuild_from_ledger(self, now: float | None = None) -> int:
        """Charges each budget key with what the ledger recorded in its current period
        (calendar budgets) or what is still undrained of its window (rolling budgets, replayed
        record by record). Returns how many keys were charged. Runs once per limiter, and only
        makes sense for state that does not outlive the process: shared state remembers."""
        if self.ledger is None or getattr(self.limiter, "_ledger_rebuilt", False):
            return 0
        wall = now if now is not None else (self.limiter._clock.wall if self.limiter._clock else time.time())
        charged = 0
        for budget in self.limiter.budgets:
            for key, micros in self._ledger_spend(budget, wall):
                if micros > 0 and budget_for(self.limiter.budgets, key) is budget:
                    self.limiter.charge(key, **{BUDGET_DIMENSION: exact_dollars(micros)})
                    charged += 1
        self.limiter._ledger_rebuilt = True  # type: ignore[attr-defined]
        return charged

    def _ledger_spend(self, budget: Budget, wall: float) -> list[tuple[str, int]]:
        """(key, micro-dollars to charge now) for every key of `budget` the ledger knows."""
        assert self.ledger is not None
        field, sep, value = budget.scope.partition(":")
        if not sep or field == "*":
            return []
        # The ledger filters and groups by its columns and by tag names alike.
        filters: dict[str, Any] = {} if "*" in value else {field: value}
        since = budget.period_start(wall)
        if budget.calendar:
            if filters:
                return [(budget.scope, self.ledger.spend(since=since, **filters))]
            groups = self.ledger.aggregate([field], since=since)
            return [(f"{field}:{g[field]}", g["cost_micros"]) for g in groups if g.get(field) is not None]
        # A rolling budget drains continuously: replay its window through the engine's own
        # drain, key by key, and charge what is still undrained now.
        events: dict[str, list[tuple[float, int]]] = {}
        for record in self.ledger.records(since=since, **filters):
            name = getattr(record, field, None) if field in KEY_FIELDS else record.tags.get(field)
            if name is not None:
                events.setdefault(f"{field}:{name}", []).append((record.time, record.cost_micros))
        return [
            (key, rolling_undrained(budget.limit_micros, budget.period, sorted(charges), wall))
            for key, charges in events.items()
        ]


def _downgrade(exceeded: BudgetExceeded, model: str) -> str:
    """The cheaper model a `"downgrade"` budget names, or the error again when there is none."""
    if exceeded.downgrade_to is None or exceeded.downgrade_to == model:
        raise exceeded
    return exceeded.downgrade_to


class GuardedCall:
    """An admitted LLM call. Every way it ends is a ledger record, with its outcome:

    - `finish(usage)`: ``ok`` (or the `outcome` given); charged and recorded at the real cost.
    - leaving the ``with`` block without `finish`: ``unfinished``; charged and recorded at the
      reservation (the worst case the call was admitted for), since the provider may have
      billed it.
    - an exception leaving the ``with`` block before `finish`: ``error``; refunded, recorded at
      $0 with the exception's type in the ``error`` tag.
    - `cancel()`: ``cancelled``; refunded, recorded at $0 (the call never reached a provider).
    """

    def __init__(
        self,
        guard: Guard,
        reservation: Reservation,
        keys: list[str],
        model: str,
        reserved_tokens: tuple[int, int],
        provider: str | None,
        tags: dict[str, Any],
    ) -> None:
        self.guard = guard
        self.reservation = reservation
        self.keys = keys
        self.model = model
        self.provider = provider
        self.tags = tags
        self.cost: Cost | None = None
        self._reserved_tokens = reserved_tokens
        self._started = time.monotonic()
        # Whether the call's end is recorded: a retry refused after the attempt before it was
        # given back leaves no reservation to settle, and the call must still be recorded.
        self._recorded = False

    def finish(self, usage: Any, *, outcome: str = "ok", charge_reserved_output: bool = False) -> Cost:
        """Reconciles with the provider's `usage` (an OpenAI or Anthropic usage object or dict):
        tokens and cost replace the reservation, the call is recorded in the ledger, and budget
        thresholds crossed for the first time this period fire. With `charge_reserved_output`
        (a provider whose token limit counts the requested max tokens, used or not: OpenAI) the
        `tokens` dimension keeps the output reservation, so a limit set to the provider's never
        admits what the provider would refuse. Input tokens are counted as the provider's rate
        limits count them: an Anthropic call's cache reads are left out (see
        `llmthrottle.pricing.usage.limits_count_cache_reads`)."""
        guard = self.guard
        cost = guard.prices.cost(self.model, usage, self.provider)
        if cost.total_micros > MAX_COST_MICROS:
            # Usage no call could have (a garbled reply): refused before anything is charged.
            raise ValueError(
                f"usage priced at {cost.total_micros} micro-dollars, over what one call can cost ({MAX_COST_MICROS})"
            )
        u = cost.usage
        input_tokens = limited_input_tokens(u, cost.provider, self.model)
        actual: dict[str, Any] = {
            "tokens": input_tokens + u.output_tokens
            if not charge_reserved_output
            else max(input_tokens, self._reserved_tokens[0]) + max(u.output_tokens, self._reserved_tokens[1]),
            "input_tokens": input_tokens,
            "output_tokens": u.output_tokens,
            "cost_usd": exact_dollars(cost.total_micros),
            BUDGET_DIMENSION: exact_dollars(cost.total_micros),
        }
        dims = set(guard.limiter.dimensions)
        commit = {k: v for k, v in actual.items() if k in dims}
        if guard.ledger is None and getattr(self.reservation, "records_usage", False):
            # The sidecar keeps the ledger: the commit carries the record's columns.
            record = call_record(self.keys, outcome=outcome, latency_s=None, tags=self.tags, cost=cost)
            commit.update((name, value) for name, value in record.items() if name in RECORD_COLUMNS and value)
        settled_before = self.reservation.settled
        try:
            self.reservation.commit(**commit)
        finally:
            # A commit that settles but finds no room to charge some usage (a full shared
            # table) raises; the call was made and billed all the same, so it is recorded.
            if self.reservation.settled and not settled_before:
                self.cost = cost
                self._record(outcome, cost)
        self._fire_thresholds()
        return cost

    def _record(self, outcome: str, cost: Cost | None = None, *, extra_tags: dict[str, Any] | None = None) -> None:
        """Records how the call ended: at `cost` when the provider's usage was priced, else at $0."""
        self._recorded = True
        ledger = self.guard.ledger
        if ledger is None:
            return
        ledger.record(
            **call_record(
                self.keys,
                outcome=outcome,
                latency_s=time.monotonic() - self._started,
                tags={**self.tags, **(extra_tags or {})},
                cost=cost,
                model=self.model,
                provider=self.provider,
                cost_micros=0,
            )
        )

    def _refund(self, outcome: str, extra_tags: dict[str, Any] | None = None) -> None:
        if self._recorded:
            return
        if not self.reservation.settled:
            self.reservation.cancel()
        self._record(outcome, extra_tags=extra_tags)

    def fail(self, outcome: str = "error", **tags: Any) -> None:
        """The call ended without usage to charge (refused by the provider, failed in transit):
        refunded, and recorded at $0 with `outcome` and `tags`."""
        self._refund(outcome, tags)

    def _amounts_again(self) -> dict[str, Any]:
        return self.guard._amounts(self.model, *self._reserved_tokens, self.provider)

    def retry(self, timeout: float | None = None) -> None:
        """Refunds this attempt (the provider refused it without billing) and waits until the
        next one is admitted: every attempt is charged to the limits, as the provider counts it."""
        self.reservation.cancel()
        self.reservation = self.guard.limiter.acquire(self.keys, timeout=timeout, **self._amounts_again())

    async def retry_async(self, timeout: float | None = None) -> None:
        """`retry` for asyncio."""
        self.reservation.cancel()
        self.reservation = await self.guard.limiter.acquire_async(self.keys, timeout=timeout, **self._amounts_again())

    def cancel(self) -> None:
        """The call never happened (or failed before any tokens were billed): full refund,
        recorded as ``cancelled`` at $0."""
        self._refund("cancelled")

    def unfinished(self, **tags: Any) -> None:
        """The call may have been billed but its usage will never be known (it was on its way to
        the provider when the caller interrupted it): charged and recorded at the reservation,
        outcome ``unfinished``, as when the ``with`` block is left without `finish`. After a
        `retry` that was refused, nothing is on its way (the refused attempt was given back): the
        call is recorded at $0, outcome ``error``."""
        if self._recorded:
            return
        self.tags.update(tags)
        if self.reservation.settled:
            self._refund("error")
            return
        self._commit_as_reserved()

    def _commit_as_reserved(self) -> None:
        input_tokens, max_output_tokens = self._reserved_tokens
        worst = self.guard.prices.worst_case_cost(self.model, input_tokens, max_output_tokens, self.provider)
        try:
            self.reservation.commit()
        finally:
            self._recorded = self.reservation.settled
            ledger = self.guard.ledger
            if self.reservation.settled and ledger is not None:
                ledger.record(
                    **unfinished_record(
                        self.keys,
                        model=self.model,
                        provider=self.provider,
                        reserved_tokens=self._reserved_tokens,
                        worst_case_micros=worst,
                        latency_s=time.monotonic() - self._started,
                        tags=self.tags,
                    )
                )

    def _fire_thresholds(self) -> None:
        guard = self.guard
        if guard._marks is None or guard.on_threshold is None:
            return
        for key in self.keys:
            budget = budget_for(guard.limiter.budgets, key)
            if budget is None:
                continue
            state = next((s for s in guard.limiter.status(key) if s.dimension == BUDGET_DIMENSION), None)
            if state is None or not state.capacity:
                continue
            fraction = float(state.used) / float(state.capacity)
            for threshold in budget.thresholds:
                if fraction >= threshold and guard._marks.try_acquire(key, **{f"t{round(threshold * 1000)}": 1}):
                    guard.on_threshold(ThresholdEvent(budget, key, threshold, float(state.used), float(state.capacity)))

    def __enter__(self) -> GuardedCall:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._recorded or (self.reservation.settled and exc_type is None):
            return
        if exc_type is not None:
            # A refused `retry` raises here too, its reservation given back already.
            self._refund("error", {"error": exc_type.__name__})
        else:
            self._commit_as_reserved()

    async def __aenter__(self) -> GuardedCall:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)
