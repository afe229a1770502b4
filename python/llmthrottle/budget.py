"""Budgets in dollars: how much a scope of keys may spend per period.

A budget is a limit in its own layer of the policy, on the `budget_usd` dimension, so it is
enforced in the same all-or-nothing acquisition as rate limits and shares their state (in
process, or across processes through `SharedState`). A user's call that also names its team and
org (`keys=["user:1", "team:a", "org:acme"]`) is charged against every budget on that path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from ._native import ConfigError, key_matches, parse_period, period_start

__all__ = [
    "Budget",
    "BudgetView",
    "BUDGET_DIMENSION",
    "BUDGET_LAYER",
    "budget_for",
    "budget_rules",
    "budget_views",
    "exact_dollars",
]

#: The dimension budgets are kept in (dollars at the API, micro-dollars inside).
BUDGET_DIMENSION = "budget_usd"
#: The policy layer of budget rules (rate limits are layer 0).
BUDGET_LAYER = 1

OnExceed = Literal["reject", "downgrade", "queue"]


@dataclass(frozen=True)
class Budget:
    """`limit_usd` per `period` for every key matching `scope` (a glob: `"team:*"`, `"org:acme"`).

    `period` is a calendar period, `"day"`, `"week"` or `"month"` (UTC: spend resets on the
    boundary; also `"daily"`, `"d"`, `"weekly"`, `"w"`, `"monthly"`, `"mo"`), or a duration such
    as `"24h"` or `"30d"` (rolling: spend drains continuously over that window). It is the same
    grammar as a quota's period (`lt.parse_period`), and an unknown one fails here.
    At 100% the budget acts per `on_exceed`: `"reject"` raises `BudgetExceeded`, `"downgrade"`
    lets a `Guard` retry with the cheaper `downgrade_to` model, `"queue"` waits for the period
    to roll over (within the caller's timeout). Each fraction in `thresholds` fires the guard's
    `on_threshold` callback once per period when spend first reaches it.

    For one key, the first budget in the list whose scope matches applies: list specific scopes
    (`"team:vip"`) before general ones (`"team:*"`).
    """

    scope: str
    limit_usd: int | float | Decimal
    period: str = "month"
    on_exceed: OnExceed = "reject"
    downgrade_to: str | None = None
    thresholds: tuple[float, ...] = field(default=(0.5, 0.8))
    name: str | None = None
    # The period as the core's grammar read it: "day", "week", "month" or "duration".
    _kind: str = field(default="month", init=False, repr=False, compare=False)
    _seconds: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"Budget({self.scope!r})"
        if not isinstance(self.scope, str) or not self.scope:
            raise ConfigError(f"{where}: scope must be a non-empty key pattern such as 'team:*'")
        limit = self.limit_usd
        if isinstance(limit, bool) or not isinstance(limit, (int, float, Decimal)):
            raise ConfigError(f"{where}: limit_usd must be a number of dollars, not {limit!r}")
        if not math.isfinite(float(limit)) or not 0 < float(limit) <= 100_000_000:
            raise ConfigError(f"{where}: limit_usd must be above 0 and at most 100,000,000 (got {limit})")
        if not isinstance(self.period, str):
            raise ConfigError(f"{where}: period must be a string such as 'month' or '30d', not {self.period!r}")
        try:
            kind, seconds = parse_period(self.period)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_seconds", seconds)
        if self.on_exceed not in ("reject", "downgrade", "queue"):
            raise ConfigError(f"{where}: on_exceed must be 'reject', 'downgrade' or 'queue', not {self.on_exceed!r}")
        if self.on_exceed == "downgrade" and not self.downgrade_to:
            raise ConfigError(f"{where}: on_exceed='downgrade' needs downgrade_to (a cheaper model)")
        if self.downgrade_to is not None and (not isinstance(self.downgrade_to, str) or not self.downgrade_to):
            raise ConfigError(f"{where}: downgrade_to must be a model name")
        thresholds = tuple(self.thresholds)
        for t in thresholds:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
                raise ConfigError(f"{where}: thresholds must be fractions in (0, 1], got {t!r}")
        object.__setattr__(self, "thresholds", tuple(sorted(set(thresholds))))

    def to_wire(self) -> dict[str, Any]:
        """The budget as plain values (the sidecar sends its budgets to clients this way);
        `limit_usd` travels as a decimal string, so no dollar is rounded on the way."""
        return {
            "scope": self.scope,
            "limit_usd": str(self.limit_usd),
            "period": self.period,
            "on_exceed": self.on_exceed,
            "downgrade_to": self.downgrade_to,
            "thresholds": list(self.thresholds),
            "name": self.name,
        }

    @classmethod
    def from_wire(cls, spec: Any) -> Budget:
        """The budget `to_wire` described; a malformed description is a ConfigError."""
        if not isinstance(spec, dict) or not isinstance(spec.get("limit_usd"), str):
            raise ConfigError(f"not a budget description: {spec!r:.200}")
        try:
            limit = Decimal(spec["limit_usd"])
        except ArithmeticError:
            raise ConfigError(f"not a budget description: {spec!r:.200}") from None
        fields = {k: v for k, v in spec.items() if k in ("scope", "period", "on_exceed", "downgrade_to", "name")}
        return cls(limit_usd=limit, thresholds=tuple(spec.get("thresholds") or ()), **fields)

    @property
    def label(self) -> str:
        """The budget's name, or its scope."""
        return self.name or self.scope

    @property
    def calendar(self) -> bool:
        """True for day/week/month budgets, False for rolling windows."""
        return self._kind != "duration"

    @property
    def limit_micros(self) -> int:
        """The limit in micro-dollars, as the engine keeps it (a fraction of a micro-dollar
        rounds up)."""
        limit = self.limit_usd
        dollars = limit if isinstance(limit, Decimal) else Decimal(repr(limit) if isinstance(limit, float) else limit)
        return math.ceil(dollars * 1_000_000)

    @property
    def window_s(self) -> float:
        """A rolling budget's window in seconds (0 for a calendar budget)."""
        return self._seconds

    def period_start(self, now: float) -> float:
        """Unix seconds at which the period (calendar) or window (rolling) containing `now`
        begins."""
        return period_start(self._kind, now) if self.calendar else now - self.window_s

    def limit_tuple(self) -> tuple[str, str, object, object]:
        """The engine limit: a calendar quota, or a rate with the whole budget as its burst."""
        amount = float(self.limit_usd)
        if self.calendar:
            return (BUDGET_DIMENSION, "quota", amount, self._kind)
        # The rate's amount in plain decimals: a float's repr of a small budget ("3e-05") is no
        # number to the rate grammar.
        return (BUDGET_DIMENSION, "rate", f"{exact_dollars(self.limit_micros)}/{self.period.strip()}", amount)


def exact_dollars(micros: int) -> str:
    """`micros` micro-dollars as the exact decimal string a dollars dimension takes
    (`"0.000123"`): how a cost reaches a budget with no float on the way."""
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def budget_rules(
    budgets: list[Budget] | tuple[Budget, ...],
) -> list[tuple[str, list[tuple[str, str, object, object]], int]]:
    """Engine rule tuples for `budgets`, in their layer."""
    seen: set[str] = set()
    rules = []
    for budget in budgets:
        if not isinstance(budget, Budget):
            raise ConfigError(f"budgets must be Budget objects, not {type(budget).__name__}")
        if budget.scope in seen:
            raise ConfigError(f"two budgets have the scope {budget.scope!r}")
        seen.add(budget.scope)
        rules.append((budget.scope, [budget.limit_tuple()], BUDGET_LAYER))
    return rules


def budget_for(budgets: tuple[Budget, ...], key: str) -> Budget | None:
    """The budget that applies to `key` (the first whose scope matches, as the engine picks)."""
    for budget in budgets:
        if key_matches(budget.scope, key):
            return budget
    return None


@dataclass(frozen=True)
class BudgetView:
    """One budget as a report shows it: for one key, with its ledger filters."""

    name: str
    limit_micros: int
    scope: dict[str, str]
    budget: Budget

    def period_start(self, now: float) -> float:
        return self.budget.period_start(now)


def budget_views(budgets: Sequence[Budget], ledger: Any, now: float) -> list[BudgetView]:
    """The budgets of a policy for a report: one view per key a `field:*` scope has spent
    under this period (from the ledger), one per exact `field:value` scope."""
    views: list[BudgetView] = []
    for budget in budgets:
        field_name, sep, value = budget.scope.partition(":")
        if not sep or field_name == "*":
            continue
        limit = budget.limit_micros
        if "*" not in value:
            views.append(BudgetView(budget.scope, limit, {field_name: value}, budget))
            continue
        groups = ledger.aggregate([field_name], since=budget.period_start(now))
        for group in groups:
            name = group.get(field_name)
            if name is not None and budget_for(tuple(budgets), f"{field_name}:{name}") is budget:
                views.append(BudgetView(f"{field_name}:{name}", limit, {field_name: str(name)}, budget))
    return views
