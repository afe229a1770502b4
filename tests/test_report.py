"""Spend reports: aggregation against a brute-force oracle, every output format, the CLI."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from llmthrottle.cli import main
from llmthrottle.ledger import Ledger
from llmthrottle.report import build_report, render, render_csv, render_html, render_json

DAY = 86_400
BASE = 1_735_689_600  # 2025-01-01T00:00:00Z

TENANTS = ["acme", "globex", "initech", None]
MODELS = ["gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro"]


def generate(path: Path, n: int = 600, seed: int = 7) -> list[dict[str, Any]]:
    """A ledger of `n` random records; returns what was recorded (the oracle's input)."""
    rng = random.Random(seed)
    records = []
    with Ledger(path) as ledger:
        for _ in range(n):
            r: dict[str, Any] = {
                "tenant": rng.choice(TENANTS),
                "team": rng.choice(["search", "support"]),
                "user": f"u{rng.randrange(12)}",
                "feature": rng.choice(["chat", "agent"]),
                "model": rng.choice(MODELS),
                "cost_micros": rng.randrange(0, 50_000),
                "input_tokens": rng.randrange(5_000),
                "output_tokens": rng.randrange(800),
                "time": BASE + rng.randrange(10) * DAY + rng.randrange(DAY),
                "tags": {"region": rng.choice(["eu", "us"])},
            }
            ledger.record(**r)
            records.append(r)
    return records


def oracle(
    records: list[dict[str, Any]], key: str, since: float | None = None, until: float | None = None
) -> dict[Any, tuple[int, int]]:
    """(calls, cost) per key value, the slow obvious way."""
    totals: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if (since is not None and r["time"] < since) or (until is not None and r["time"] >= until):
            continue
        value = r["tags"].get(key) if key not in r else r[key]
        totals[value][0] += 1
        totals[value][1] += r["cost_micros"]
    return {k: (v[0], v[1]) for k, v in totals.items()}


@pytest.fixture(scope="module")
def ledger_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path_factory.mktemp("ledger")
    return path, generate(path)


@pytest.mark.parametrize("key", ["tenant", "team", "user", "feature", "model", "region"])
def test_spend_by_any_key_matches_the_oracle(ledger_data: tuple[Path, list[dict[str, Any]]], key: str) -> None:
    path, records = ledger_data
    since, until = BASE + 2 * DAY, BASE + 8 * DAY
    with Ledger(path, readonly=True) as ledger:
        report = build_report(ledger, since=since, until=until, group_by=[key])
    rows = report.groups[key]
    assert {r.key: (r.calls, r.cost_micros) for r in rows} == oracle(records, key, since, until)
    assert [r.cost_micros for r in rows] == sorted((r.cost_micros for r in rows), reverse=True)
    assert report.total.cost_micros == sum(r.cost_micros for r in rows)


def test_daily_trend_top_calls_and_totals(ledger_data: tuple[Path, list[dict[str, Any]]]) -> None:
    path, records = ledger_data
    with Ledger(path, readonly=True) as ledger:
        report = build_report(ledger, top=5)
    assert [d.key for d in report.daily] == [f"2025-01-{d:02d}" for d in range(1, 11)]
    for day in report.daily:
        start = BASE + (int(day.key[-2:]) - 1) * DAY
        assert day.cost_micros == sum(r["cost_micros"] for r in records if start <= r["time"] < start + DAY)
    expected_top = sorted((r["cost_micros"] for r in records), reverse=True)[:5]
    assert [c.cost_micros for c in report.top_calls] == expected_top
    assert report.total.calls == len(records)
    assert report.total.input_tokens == sum(r["input_tokens"] for r in records)


def test_filters_restrict_every_section(ledger_data: tuple[Path, list[dict[str, Any]]]) -> None:
    path, records = ledger_data
    with Ledger(path, readonly=True) as ledger:
        report = build_report(ledger, group_by=["model"], filters={"tenant": "acme"})
    acme = [r for r in records if r["tenant"] == "acme"]
    assert report.total.cost_micros == sum(r["cost_micros"] for r in acme)
    assert {r.key: (r.calls, r.cost_micros) for r in report.groups["model"]} == oracle(acme, "model")


def test_days_without_spend_are_zero_filled(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        ledger.record(model="gpt-4o", cost_micros=5, time=BASE)
        ledger.record(model="gpt-4o", cost_micros=7, time=BASE + 3 * DAY)
        report = build_report(ledger)
    assert [(d.key, d.cost_micros) for d in report.daily] == [
        ("2025-01-01", 5),
        ("2025-01-02", 0),
        ("2025-01-03", 0),
        ("2025-01-04", 7),
    ]


@dataclass
class FakeBudget:
    """Stands in for lt.Budget: the report's budget hook needs only these members."""

    name: str
    limit_micros: int
    scope: Mapping[str, Any] = field(default_factory=dict)

    def period_start(self, now: float) -> float:
        return BASE + 5 * DAY


def test_budget_status_hook(ledger_data: tuple[Path, list[dict[str, Any]]]) -> None:
    path, records = ledger_data
    budget = FakeBudget("acme-monthly", 1_000_000, {"tenant": "acme"})
    with Ledger(path, readonly=True) as ledger:
        report = build_report(ledger, budgets=[budget], now=BASE + 9 * DAY)
    (status,) = report.budgets
    assert status.spent_micros == sum(
        r["cost_micros"] for r in records if r["tenant"] == "acme" and r["time"] >= BASE + 5 * DAY
    )
    assert status.remaining_micros == 1_000_000 - status.spent_micros
    assert "acme-monthly" in render_html(report) and "acme-monthly" in render(report, "table")
    assert json.loads(render_json(report))["budgets"][0]["limit_usd"] == "1.000000"


def test_csv_and_json_parse_and_carry_exact_money(ledger_data: tuple[Path, list[dict[str, Any]]]) -> None:
    path, records = ledger_data
    with Ledger(path, readonly=True) as ledger:
        report = build_report(ledger, group_by=["tenant"], top=3)
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    (total,) = [r for r in rows if r["section"] == "total"]
    assert int(total["cost_micros"]) == sum(r["cost_micros"] for r in records)
    micros = int(total["cost_micros"])
    assert total["cost_usd"] == f"{micros // 10**6}.{micros % 10**6:06d}"
    assert {r["key"] for r in rows if r["section"] == "by:tenant"} == {"acme", "globex", "initech", ""}
    assert len([r for r in rows if r["section"] == "top"]) == 3
    assert len([r for r in rows if r["section"] == "day"]) == 10

    data = json.loads(render_json(report))
    assert data["total"]["cost_micros"] == micros
    assert sum(g["cost_micros"] for g in data["groups"]["tenant"]) == micros
    assert len(data["top_calls"]) == 3 and data["top_calls"][0]["model"] in MODELS


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]


def test_html_is_self_contained_with_svg_charts_and_escaped_text(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        ledger.record(model="gpt-4o", cost_micros=5, tenant="<script>alert(1)</script>", time=BASE)
        report = build_report(ledger)
    page = render_html(report)
    parser = _Collector()
    parser.feed(page)
    assert parser.tags.count("svg") >= 2  # the trend and at least one group chart
    assert "script" not in parser.tags and parser.urls == []  # no script, nothing fetched
    assert "&lt;script&gt;" in page


def test_cli_report_formats_and_errors(
    ledger_data: tuple[Path, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, records = ledger_data
    assert (
        main(
            [
                "report",
                "--ledger",
                str(path),
                "--by",
                "tenant,region",
                "--format",
                "json",
                "--since",
                "2025-01-03",
                "--until",
                "2025-01-05",
                "--where",
                "team=search",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    expected = sum(
        r["cost_micros"] for r in records if r["team"] == "search" and BASE + 2 * DAY <= r["time"] < BASE + 4 * DAY
    )
    assert data["total"]["cost_micros"] == expected
    assert set(data["groups"]) == {"tenant", "region"}

    out = tmp_path / "r.html"
    assert main(["report", "--ledger", str(path), "--format", "html", "-o", str(out)]) == 0
    assert out.read_text().startswith("<!doctype html>")

    assert main(["report", "--ledger", str(path), "--read-only"]) == 0
    assert "Spend by tenant" in capsys.readouterr().out

    assert main(["report", "--ledger", str(tmp_path / "missing")]) == 2
    assert "no ledger directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--ledger", str(path), "--since", "last tuesday"])
