"""Report LLM spend from a usage ledger: by tenant, team, user, feature, model or any tag, per
day, and the most expensive calls, as a terminal table, CSV, JSON or a self-contained HTML page.

Examples:
  llmthrottle report --ledger /var/lib/app/ledger --since 30d
  llmthrottle report --ledger DIR --by tenant,model --where team=search --format html -o r.html
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .._native import ConfigError, parse_period, period_start
from ..ledger import Ledger
from .html import render_html
from .model import (
    DEFAULT_GROUPS,
    BudgetStatus,
    GroupRow,
    Report,
    ReportableBudget,
    build_report,
    format_usd,
)
from .text import render_csv, render_json, render_table

__all__ = [
    "BudgetStatus",
    "GroupRow",
    "Report",
    "ReportableBudget",
    "build_report",
    "configure_parser",
    "format_usd",
    "render",
    "render_csv",
    "render_html",
    "render_json",
    "render_table",
    "run",
]

RENDERERS: dict[str, Callable[[Report], str]] = {
    "table": render_table,
    "csv": render_csv,
    "json": render_json,
    "html": render_html,
}


def render(report: Report, fmt: str) -> str:
    """The report in one of: table, csv, json, html."""
    try:
        return RENDERERS[fmt](report)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; choose from {sorted(RENDERERS)}") from None


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from an ISO date/datetime (UTC unless it says otherwise), a duration
    (`30d`, `12h`, `2w`: that long before now) or a calendar period (`day`, `week`, `month`:
    the start of the current one, UTC), in the period grammar budgets and quotas share."""
    now = time.time() if now is None else now
    try:
        kind, seconds = parse_period(text)
    except ConfigError:
        pass
    else:
        return now - seconds if kind == "duration" else period_start(kind, now)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use 2025-01-31, 2025-01-31T12:00, a duration such as 30d, 12h or 2w, "
            "or day, week or month for the start of the current one"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _where(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid filter {text!r}: use key=value")
    return key.strip(), value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--ledger", default=os.environ.get("LLMTHROTTLE_LEDGER"), help="ledger directory (default: $LLMTHROTTLE_LEDGER)"
    )
    parser.add_argument("--since", type=parse_time, help="start: ISO date/time or 30d, 12h, 2w")
    parser.add_argument("--until", type=parse_time, help="end (exclusive), same forms")
    parser.add_argument(
        "--by",
        default=",".join(DEFAULT_GROUPS),
        help="comma-separated keys to group by: tenant, team, user, feature, "
        "model, provider, outcome or any tag (default: %(default)s)",
    )
    parser.add_argument(
        "--where",
        type=_where,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only records with this key (repeatable)",
    )
    parser.add_argument("--top", type=int, default=10, help="most expensive calls to list")
    parser.add_argument("--format", choices=sorted(RENDERERS), default="table")
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    parser.add_argument("--config", help="a policy file (llmthrottle.toml): show the status of its budgets")
    parser.add_argument(
        "--read-only", action="store_true", help="do not replay journals of dead writers before reporting"
    )


def run(args: argparse.Namespace) -> int:
    if not args.ledger:
        print("llmthrottle report: --ledger DIR is required (or set LLMTHROTTLE_LEDGER)", file=sys.stderr)
        return 2
    if not os.path.isdir(args.ledger):
        print(f"llmthrottle report: no ledger directory at {args.ledger}", file=sys.stderr)
        return 2
    group_by = [k.strip() for k in args.by.split(",") if k.strip()]
    filters: dict[str, Any] = {}
    for key, value in args.where:
        filters.setdefault(key, []).append(value)
    filters = {k: v[0] if len(v) == 1 else v for k, v in filters.items()}
    try:
        budgets: list[Any] = []
        if args.config:
            from ..sidecar.config import load_config

            for namespace_budgets in load_config(args.config).budgets.values():
                budgets.extend(namespace_budgets)
        with Ledger(args.ledger, readonly=args.read_only) as ledger:
            from ..budget import budget_views

            views = budget_views(budgets, ledger, time.time()) if budgets else None
            report = build_report(
                ledger,
                since=args.since,
                until=args.until,
                group_by=group_by,
                top=args.top,
                filters=filters,
                budgets=views,
            )
    except (ValueError, FileNotFoundError) as e:
        print(f"llmthrottle report: {e}", file=sys.stderr)
        return 2
    text = render(report, args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
