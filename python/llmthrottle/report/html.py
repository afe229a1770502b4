"""A self-contained HTML report: inline CSS and SVG charts drawn here, no script, no CDN."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from .model import GroupRow, Report

__all__ = ["render_html"]

_ACCENT = "#3563e9"
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2433;
  margin:0;background:#f5f6f8}
main{max-width:1100px;margin:0 auto;padding:28px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:17px;margin:0 0 12px}
.muted{color:#667085}.cards{display:flex;gap:14px;margin:20px 0}
.card{background:#fff;border-radius:10px;padding:14px 18px;flex:1;box-shadow:0 1px 2px #0001}
.card b{display:block;font-size:22px;margin-top:2px}
section{background:#fff;border-radius:10px;padding:18px 20px;margin:16px 0;
  box-shadow:0 1px 2px #0001}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}.grid section{margin:0}
table{border-collapse:collapse;width:100%;font-size:13px;margin-top:8px}
th,td{padding:5px 8px;border-bottom:1px solid #eceef2;text-align:right;white-space:nowrap}
th{color:#667085;font-weight:600}th:first-child,td:first-child{text-align:left}
td.l{text-align:left}.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px}
svg text{font:12px system-ui,sans-serif;fill:#475467}
.bar{height:10px;background:#eceef2;border-radius:5px;overflow:hidden;margin-top:6px}
.bar i{display:block;height:100%;background:#12b76a}.bar i.warn{background:#f79009}
.bar i.over{background:#f04438}
"""


def _money(micros: int) -> str:
    """Display dollars: 2 decimals for large amounts, more for small ones."""
    dollars = micros / 1_000_000
    if dollars >= 100:
        return f"${dollars:,.2f}"
    if dollars >= 1:
        return f"${dollars:,.3f}"
    return f"${dollars:.4f}" if dollars >= 0.01 or micros == 0 else f"${dollars:.6f}"


def _label(key: object) -> str:
    return "(none)" if key is None else str(key)


def _nice_max(value: int) -> int:
    """A round axis maximum at or above `value` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def trend_chart(days: Sequence[GroupRow], width: int = 1040, height: int = 240) -> str:
    """Vertical bars of cost per day with a labelled y axis."""
    if not days:
        return '<p class="muted">No spend in this period.</p>'
    left, bottom, top = 70, 28, 12
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = _nice_max(max(d.cost_micros for d in days))
    slot = plot_w / len(days)
    parts = [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="Spend per day">']
    for i in range(5):
        value = peak * i // 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eceef2"/>')
        axis = f"${value / 1e6:,.2f}" if peak >= 1_000_000 else f"${value / 1e6:.4f}"
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(axis)}</text>')
    label_every = max(1, len(days) // 12)
    for i, day in enumerate(days):
        h = plot_h * day.cost_micros / peak
        x = left + i * slot + slot * 0.15
        parts.append(
            f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{h:.1f}" rx="2" fill="{_ACCENT}"><title>{escape(str(day.key))}: '
            f"{escape(_money(day.cost_micros))}, {day.calls:,} calls</title></rect>"
        )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{height - 8}" '
                f'text-anchor="middle">{escape(str(day.key)[5:])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(rows: Sequence[GroupRow], limit: int = 10, width: int = 500) -> str:
    """Horizontal bars of cost per group, the `limit` largest."""
    rows = [r for r in rows[:limit]]
    if not rows:
        return '<p class="muted">No spend in this period.</p>'
    row_h, label_w, value_w = 24, 150, 90
    height = row_h * len(rows) + 4
    peak = max(r.cost_micros for r in rows) or 1
    bar_w = width - label_w - value_w
    parts = [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img">']
    for i, row in enumerate(rows):
        y = i * row_h + 2
        w = max(1.0, bar_w * row.cost_micros / peak)
        label = _label(row.key)
        short = label if len(label) <= 22 else label[:21] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
            f'rx="3" fill="{_ACCENT}" opacity="{1 - 0.05 * i:.2f}"/>'
        )
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{escape(_money(row.cost_micros))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _group_table(key: str, rows: Sequence[GroupRow], limit: int = 15) -> str:
    body = "".join(
        f"<tr><td>{escape(_label(r.key))}</td><td>{r.calls:,}</td><td>{r.input_tokens:,}</td>"
        f"<td>{r.cached_input_tokens:,}</td><td>{r.output_tokens:,}</td>"
        f"<td>{escape(_money(r.cost_micros))}</td></tr>"
        for r in rows[:limit]
    )
    more = f'<p class="muted">and {len(rows) - limit} more</p>' if len(rows) > limit else ""
    return (
        f"<table><tr><th>{escape(key)}</th><th>calls</th><th>input</th><th>cached</th>"
        f"<th>output</th><th>cost</th></tr>{body}</table>{more}"
    )


def _budgets(report: Report) -> str:
    if not report.budgets:
        return ""
    items = []
    for s in report.budgets:
        fraction = s.used_fraction
        css = "over" if fraction >= 1 else "warn" if fraction >= 0.8 else ""
        items.append(
            f"<div style='margin:10px 0'><b>{escape(s.name)}</b> "
            f"<span class='muted'>{escape(_money(s.spent_micros))} of "
            f"{escape(_money(s.limit_micros))} ({fraction:.0%})</span>"
            f"<div class='bar'><i class='{css}' style='width:{min(fraction, 1) * 100:.1f}%'>"
            "</i></div></div>"
        )
    return f"<section><h2>Budgets</h2>{''.join(items)}</section>"


def _top_calls(report: Report) -> str:
    if not report.top_calls:
        return ""
    rows = "".join(
        f"<tr><td>{datetime.fromtimestamp(r.time, UTC):%Y-%m-%d %H:%M}</td>"
        f"<td class='l'>{escape(r.model)}</td><td class='l'>{escape(_label(r.tenant))}</td>"
        f"<td class='l'>{escape(_label(r.feature))}</td><td>{r.input_tokens:,}</td>"
        f"<td>{r.output_tokens:,}</td><td>{escape(_money(r.cost_micros))}</td>"
        f"<td class='l mono'>{escape(r.id)}</td></tr>"
        for r in report.top_calls
    )
    return (
        "<section><h2>Most expensive calls</h2><table><tr><th>time (UTC)</th>"
        "<th style='text-align:left'>model</th><th style='text-align:left'>tenant</th>"
        "<th style='text-align:left'>feature</th><th>input</th><th>output</th><th>cost</th>"
        f"<th style='text-align:left'>id</th></tr>{rows}</table></section>"
    )


def render_html(report: Report) -> str:
    """The whole report as one HTML document."""
    total = report.total
    tokens = total.input_tokens + total.cached_input_tokens + total.output_tokens
    average = total.cost_micros // total.calls if total.calls else 0
    filters = " · " + ", ".join(f"{k}={v}" for k, v in report.filters.items()) if report.filters else ""
    cards = "".join(
        f"<div class='card'><span class='muted'>{escape(name)}</span><b>{escape(value)}</b></div>"
        for name, value in (
            ("Total spend", _money(total.cost_micros)),
            ("Calls", f"{total.calls:,}"),
            ("Tokens", f"{tokens:,}"),
            ("Average per call", _money(average)),
        )
    )
    groups = "".join(
        f"<section><h2>Spend by {escape(key)}</h2>{bar_chart(rows)}{_group_table(key, rows)}</section>"
        for key, rows in report.groups.items()
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>LLM spend report</title><style>{_CSS}</style></head><body><main>"
        "<h1>LLM spend report</h1>"
        f"<div class='muted'>{escape(report.period_label())}{escape(filters)} · generated "
        f"{datetime.fromtimestamp(report.generated_at, UTC):%Y-%m-%d %H:%M} UTC</div>"
        f"<div class='cards'>{cards}</div>{_budgets(report)}"
        f"<section><h2>Spend per day (UTC)</h2>{trend_chart(report.daily)}</section>"
        f"<div class='grid'>{groups}</div>{_top_calls(report)}"
        "</main></body></html>\n"
    )
