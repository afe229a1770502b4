"""What a spend report contains, computed from a ledger; renderers only format it."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from ..ledger import Ledger, UsageRecord

__all__ = ["BudgetStatus", "GroupRow", "Report", "ReportableBudget", "build_report", "format_usd"]

DEFAULT_GROUPS = ("tenant", "team", "user", "feature", "model")


def format_usd(micros: int) -> str:
    """Exact dollars from integer micro-dollars: 40000 -> '0.040000'."""
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    return f"{sign}{micros // 1_000_000}.{micros % 1_000_000:06d}"


@dataclass(frozen=True, slots=True)
class GroupRow:
    """Totals of one group (a tenant, a model, a day...). `key` None: records without it."""

    key: Any
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_micros: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_micros": self.cost_micros,
            "cost_usd": format_usd(self.cost_micros),
        }


class ReportableBudget(Protocol):
    """What a report needs from a budget (the hook for `lt.Budget`): a name, a limit, the
    ledger filters that define its scope, and the start of its current period."""

    @property
    def name(self) -> str: ...
    @property
    def limit_micros(self) -> int: ...
    @property
    def scope(self) -> Mapping[str, Any]: ...

    def period_start(self, now: float) -> float: ...


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    name: str
    limit_micros: int
    spent_micros: int
    period_start: float
    scope: Mapping[str, Any] = field(default_factory=dict)

    @property
    def remaining_micros(self) -> int:
        return self.limit_micros - self.spent_micros

    @property
    def used_fraction(self) -> float:
        return self.spent_micros / self.limit_micros if self.limit_micros else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": dict(self.scope),
            "limit_micros": self.limit_micros,
            "spent_micros": self.spent_micros,
            "remaining_micros": self.remaining_micros,
            "limit_usd": format_usd(self.limit_micros),
            "spent_usd": format_usd(self.spent_micros),
            "period_start": _iso(self.period_start),
        }


@dataclass(frozen=True)
class Report:
    since: float | None
    until: float | None
    generated_at: float
    filters: Mapping[str, Any]
    total: GroupRow
    groups: Mapping[str, list[GroupRow]]
    daily: list[GroupRow]
    top_calls: list[UsageRecord]
    budgets: list[BudgetStatus]

    def period_label(self) -> str:
        if self.since is None and self.until is None:
            return "all time"
        start = _iso(self.since) if self.since is not None else "the first record"
        end = _iso(self.until) if self.until is not None else "now"
        return f"from {start} to {end}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _rows(entries: list[dict[str, Any]], key: str | None) -> list[GroupRow]:
    return [
        GroupRow(
            key=e.get(key) if key else "total",
            calls=e["calls"],
            input_tokens=e["input_tokens"],
            output_tokens=e["output_tokens"],
            cached_input_tokens=e["cached_input_tokens"],
            cache_write_tokens=e["cache_write_tokens"],
            reasoning_tokens=e["reasoning_tokens"],
            cost_micros=e["cost_micros"],
        )
        for e in entries
    ]


def _fill_days(rows: list[GroupRow]) -> list[GroupRow]:
    """Every day from the first to the last, zero where nothing was spent (for the trend)."""
    by_day = {r.key: r for r in rows if r.key is not None}
    if not by_day:
        return []
    day, last = date.fromisoformat(min(by_day)), date.fromisoformat(max(by_day))
    filled = []
    while day <= last:
        filled.append(by_day.get(day.isoformat(), GroupRow(key=day.isoformat())))
        day += timedelta(days=1)
    return filled


def build_report(
    ledger: Ledger,
    *,
    since: float | None = None,
    until: float | None = None,
    group_by: Sequence[str] = DEFAULT_GROUPS,
    top: int = 10,
    budgets: Sequence[ReportableBudget] | None = None,
    now: float | None = None,
    filters: Mapping[str, Any] | None = None,
) -> Report:
    """Spend over [since, until) (unix seconds) by each key of `group_by`, per UTC day, the
    `top` most expensive calls and, when given, the status of each budget."""
    filters = dict(filters or {})
    now = time.time() if now is None else now
    query = {"since": since, "until": until, **filters}
    (total,) = _rows(ledger.aggregate([], **query), None)
    groups = {key: _rows(ledger.aggregate([key], **query), key) for key in group_by}
    daily = sorted(_rows(ledger.aggregate(["day"], **query), "day"), key=lambda r: r.key or "")
    statuses = []
    for budget in budgets or ():
        start = budget.period_start(now)
        statuses.append(
            BudgetStatus(
                name=budget.name,
                limit_micros=budget.limit_micros,
                period_start=start,
                spent_micros=ledger.spend(since=start, **dict(budget.scope)),
                scope=dict(budget.scope),
            )
        )
    return Report(
        since=since,
        until=until,
        generated_at=now,
        filters=filters,
        total=total,
        groups=groups,
        daily=_fill_days(daily),
        top_calls=ledger.top(top, **query) if top > 0 else [],
        budgets=statuses,
    )
