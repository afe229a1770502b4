"""Plain renderers: terminal table, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..ledger import UsageRecord
from .model import GroupRow, Report, format_usd

__all__ = ["render_csv", "render_json", "render_table"]

CSV_COLUMNS = (
    "section",
    "key",
    "calls",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_micros",
    "cost_usd",
    "detail",
)


def _key(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _when(record: UsageRecord) -> str:
    return datetime.fromtimestamp(record.time, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _call_detail(record: UsageRecord) -> str:
    keys = [
        f"{k}={getattr(record, k)}" for k in ("tenant", "team", "user", "feature") if getattr(record, k) is not None
    ]
    return f"{_when(record)} {record.model} {' '.join(keys)}".strip()


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i >= numeric_from else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _group_cells(row: GroupRow) -> list[str]:
    return [
        _key(row.key),
        f"{row.calls:,}",
        f"{row.input_tokens:,}",
        f"{row.cached_input_tokens:,}",
        f"{row.output_tokens:,}",
        "$" + format_usd(row.cost_micros),
    ]


def render_table(report: Report, max_rows: int = 20) -> str:
    """A report for the terminal."""
    out = [
        f"LLM spend {report.period_label()}",
        f"total ${format_usd(report.total.cost_micros)} over {report.total.calls:,} calls",
    ]
    if report.filters:
        out.append("filters: " + ", ".join(f"{k}={v}" for k, v in report.filters.items()))
    for status in report.budgets:
        out.append(
            f"budget {status.name}: ${format_usd(status.spent_micros)} of "
            f"${format_usd(status.limit_micros)} ({status.used_fraction:.0%})"
        )
    for key, rows in report.groups.items():
        headers = [key, "calls", "input", "cached", "output", "cost"]
        cells = [_group_cells(r) for r in rows[:max_rows]]
        if len(rows) > max_rows:
            cells.append([f"... {len(rows) - max_rows} more", "", "", "", "", ""])
        out += ["", f"Spend by {key}", _table(headers, cells)]
    if report.daily:
        out += [
            "",
            "Spend per day (UTC)",
            _table(["day", "calls", "input", "cached", "output", "cost"], [_group_cells(r) for r in report.daily]),
        ]
    if report.top_calls:
        out += [
            "",
            "Most expensive calls",
            _table(
                ["time (UTC)", "model", "tenant", "input", "output", "cost", "id"],
                [
                    [
                        _when(r),
                        r.model,
                        _key(r.tenant),
                        f"{r.input_tokens:,}",
                        f"{r.output_tokens:,}",
                        "$" + format_usd(r.cost_micros),
                        r.id,
                    ]
                    for r in report.top_calls
                ],
                numeric_from=3,
            ),
        ]
    return "\n".join(out) + "\n"


def render_csv(report: Report) -> str:
    """One CSV, long format: a `section` column says which table a row belongs to
    (total, by:<key>, day, top, budget)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)

    def group_row(section: str, row: GroupRow) -> None:
        d = row.as_dict()
        writer.writerow([section, "" if row.key is None else row.key, *(d[c] for c in CSV_COLUMNS[2:-1]), ""])

    group_row("total", report.total)
    for key, rows in report.groups.items():
        for row in rows:
            group_row(f"by:{key}", row)
    for row in report.daily:
        group_row("day", row)
    for r in report.top_calls:
        writer.writerow(
            [
                "top",
                r.id,
                1,
                r.input_tokens,
                r.cached_input_tokens,
                r.cache_write_tokens,
                r.output_tokens,
                r.reasoning_tokens,
                r.cost_micros,
                format_usd(r.cost_micros),
                _call_detail(r),
            ]
        )
    for status in report.budgets:
        writer.writerow(
            [
                "budget",
                status.name,
                "",
                "",
                "",
                "",
                "",
                "",
                status.spent_micros,
                format_usd(status.spent_micros),
                f"limit_usd={format_usd(status.limit_micros)}",
            ]
        )
    return buffer.getvalue()


def _record_dict(record: UsageRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "time": datetime.fromtimestamp(record.time, UTC).isoformat(),
        "model": record.model,
        "provider": record.provider,
        "tenant": record.tenant,
        "team": record.team,
        "user": record.user,
        "feature": record.feature,
        "input_tokens": record.input_tokens,
        "cached_input_tokens": record.cached_input_tokens,
        "cache_write_tokens": record.cache_write_tokens,
        "output_tokens": record.output_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "cost_micros": record.cost_micros,
        "cost_usd": format_usd(record.cost_micros),
        "latency_s": record.latency_s,
        "outcome": record.outcome,
        "tags": dict(record.tags),
    }


def report_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON-ready data (money as integer micros and exact USD strings)."""

    def iso(ts: float | None) -> str | None:
        return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()

    return {
        "since": iso(report.since),
        "until": iso(report.until),
        "generated_at": iso(report.generated_at),
        "filters": dict(report.filters),
        "total": report.total.as_dict(),
        "groups": {k: [r.as_dict() for r in rows] for k, rows in report.groups.items()},
        "daily": [r.as_dict() for r in report.daily],
        "top_calls": [_record_dict(r) for r in report.top_calls],
        "budgets": [s.as_dict() for s in report.budgets],
    }


def render_json(report: Report) -> str:
    return json.dumps(report_dict(report), indent=2) + "\n"
