"""Budgets in dollars: hierarchy, reconciliation, thresholds, rollover, policies, restarts."""

from __future__ import annotations

import multiprocessing as mp
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmthrottle as lt
from llmthrottle.budget import Budget
from llmthrottle.guard import Guard
from llmthrottle.testing import FakeClock

# gpt-4o-mini list price per 1M tokens: $0.15 input, $0.60 output (see prices.toml).
MINI = "gpt-4o-mini"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def make(budgets, limits=None, **kwargs):
    clock = FakeClock()
    limiter = lt.Limiter(limits or {"requests": "1000/s"}, budgets=budgets, clock=clock)
    return Guard(limiter, **kwargs), clock


def spent(guard, key):
    return next(s.used for s in guard.limiter.status(key) if s.dimension == "budget_usd")


def test_admission_charges_the_worst_case_and_finish_reconciles():
    guard, _ = make([Budget("team:*", 1.0, "day")])
    call = guard.call("team:a", model=MINI, input_tokens=1_000_000, max_output_tokens=1_000_000)
    assert spent(guard, "team:a") == pytest.approx(0.75)  # $0.15 + $0.60
    cost = call.finish(usage(1_000_000, 100_000))
    assert cost.total_micros == 150_000 + 60_000
    assert spent(guard, "team:a") == pytest.approx(0.21)


def test_hierarchical_budgets_all_or_nothing():
    guard, _ = make([Budget("user:*", 1.0, "day"), Budget("team:*", 1.5, "day"), Budget("org:*", 100, "month")])
    guard.call(["user:1", "team:a", "org:x"], model=MINI, max_output_tokens=1_000_000).finish(usage(0, 1_000_000))
    guard.call(["user:2", "team:a", "org:x"], model=MINI, max_output_tokens=1_000_000).finish(usage(0, 1_000_000))
    # user:3 has room, but the team does not: nothing is charged anywhere.
    with pytest.raises(lt.BudgetExceeded) as info:
        guard.call(["user:3", "team:a", "org:x"], model=MINI, max_output_tokens=1_000_000)
    assert info.value.key == "team:a" and info.value.budget.scope == "team:*"
    assert spent(guard, "user:3") == 0
    assert spent(guard, "org:x") == pytest.approx(1.2)


def test_calendar_budget_rolls_over():
    guard, clock = make([Budget("team:*", 0.5, "day")])
    guard.call("team:a", model=MINI, max_output_tokens=800_000).finish(usage(0, 800_000))
    with pytest.raises(lt.BudgetExceeded) as info:
        guard.call("team:a", model=MINI, max_output_tokens=100_000)
    assert info.value.retry_after == pytest.approx(86_400 - 0)  # FakeClock starts at midnight UTC
    clock.advance(86_400)
    guard.call("team:a", model=MINI, max_output_tokens=100_000).cancel()


def test_rolling_budget_drains_over_its_window():
    guard, clock = make([Budget("team:*", 1.0, "24h")])
    guard.call("team:a", model=MINI, max_output_tokens=1_000_000).finish(usage(0, 1_000_000))
    assert spent(guard, "team:a") == pytest.approx(0.6)
    clock.advance(12 * 3600)
    assert spent(guard, "team:a") == pytest.approx(0.1)


def test_a_rolling_budget_of_a_few_micro_dollars_is_a_budget_like_any_other():
    # 0.00003 is "3e-05" to repr: the rate must still read as 30 micro-dollars per 3 seconds.
    clock = FakeClock()
    lim = lt.Limiter({"requests": "100/s"}, budgets=[Budget("user:*", 0.00003, "3s")], clock=clock)
    lim.acquire("user:1", budget_usd="0.000020").commit()
    assert not lim.try_acquire("user:1", budget_usd="0.000020")
    clock.advance(1.0)  # 10 micro-dollars drained
    assert lim.try_acquire("user:1", budget_usd="0.000020")


def test_queue_waits_for_the_next_period_within_the_timeout():
    guard, clock = make([Budget("team:*", 0.5, "day", on_exceed="queue")])
    guard.call("team:a", model=MINI, max_output_tokens=800_000).finish(usage(0, 800_000))
    with pytest.raises(lt.BudgetExceeded):
        guard.call("team:a", model=MINI, max_output_tokens=100_000, timeout=60)
    call = guard.call("team:a", model=MINI, max_output_tokens=100_000, timeout=2 * 86_400)
    assert clock.wall == pytest.approx(1_767_225_600 + 86_400)
    call.cancel()


def test_downgrade_retries_with_the_cheaper_model():
    guard, _ = make([Budget("team:*", 1.0, "day", on_exceed="downgrade", downgrade_to=MINI)])
    # gpt-4o: $2.50/$10 per 1M: 100k output tokens worst case is $1.00 (fits), 200k does not.
    call = guard.call("team:a", model="gpt-4o", max_output_tokens=200_000)
    assert call.model == MINI
    call.cancel()


def test_thresholds_fire_once_per_period():
    events = []
    guard, clock = make([Budget("team:*", 1.0, "day", thresholds=(0.5, 0.8))], on_threshold=events.append)
    for _ in range(9):
        guard.call("team:a", model=MINI, max_output_tokens=200_000).finish(usage(0, 166_667))  # ~$0.10
    assert [(e.key, e.threshold) for e in events] == [("team:a", 0.5), ("team:a", 0.8)]
    clock.advance(86_400)
    for _ in range(6):
        guard.call("team:a", model=MINI, max_output_tokens=200_000).finish(usage(0, 166_667))
    assert [e.threshold for e in events] == [0.5, 0.8, 0.5]


def test_context_manager_refunds_on_error():
    guard, _ = make([Budget("team:*", 1.0, "day")])
    with pytest.raises(RuntimeError):
        with guard.call("team:a", model=MINI, max_output_tokens=1_000_000):
            raise RuntimeError("provider error")
    assert spent(guard, "team:a") == 0


def test_ledger_records_and_rebuilds_spend_after_restart(tmp_path):
    ledger = lt.Ledger(tmp_path / "ledger")
    guard, clock = make([Budget("team:*", 1.0, "day"), Budget("org:acme", 5.0, "month")], ledger=ledger)
    guard.call(["team:a", "org:acme"], model=MINI, max_output_tokens=1_000_000, feature="chat").finish(
        usage(1000, 500_000)
    )
    guard.call(["team:b", "org:acme"], model=MINI, max_output_tokens=1_000_000).finish(usage(0, 100_000))
    records = list(ledger.records())
    assert [(r.team, r.feature, r.tags.get("org")) for r in records] == [("a", "chat", "acme"), ("b", None, "acme")]
    assert records[0].cost_micros == 150 + 300_000
    # A new process: fresh in-process state, spend rebuilt from the ledger.
    fresh = lt.Limiter({"requests": "1000/s"}, budgets=guard.limiter.budgets, clock=clock)
    rebuilt = Guard(fresh, ledger=ledger)
    assert spent(rebuilt, "team:a") == pytest.approx(0.30015)
    assert spent(rebuilt, "team:b") == pytest.approx(0.06)
    assert spent(rebuilt, "org:acme") == pytest.approx(0.36015)
    ledger.close()


def test_a_call_whose_usage_meets_a_full_table_is_still_recorded(tmp_path):
    name = f"lt-guard-full-{uuid.uuid4().hex[:12]}"
    state = lt.SharedState(name, capacity=1, path=tmp_path / "table")
    limiter = lt.Limiter(
        {"requests": "1000/s", "input_tokens": "1M/min"}, budgets=[Budget("team:*", 1.0, "day")], state=state
    )
    ledger = lt.Ledger(tmp_path / "ledger")
    call = Guard(limiter, ledger=ledger).call("team:a", model=MINI, input_tokens=0, max_output_tokens=10)
    with pytest.raises(lt.StateError, match="is full"):  # other keys take every slot
        for n in range(1000):
            limiter.try_acquire(f"filler-{n}")
    # No input tokens were reserved, and there is no room left for the key's input_tokens cell.
    with pytest.raises(lt.StateError, match="is full"):
        call.finish(usage(1000, 10))
    assert call.reservation.settled and call.cost is not None
    assert [(r.team, r.input_tokens, r.output_tokens) for r in ledger.records()] == [("a", 1000, 10)]
    ledger.close()


def test_unknown_model_is_an_error_not_free():
    guard, _ = make([Budget("team:*", 1.0, "day")])
    with pytest.raises(lt.ConfigError, match="no price for model 'gpt-imaginary'"):
        guard.call("team:a", model="gpt-imaginary", max_output_tokens=10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scope": "", "limit_usd": 1}, "scope"),
        ({"scope": "t:*", "limit_usd": 0}, "above 0"),
        ({"scope": "t:*", "limit_usd": float("nan")}, "above 0"),
        ({"scope": "t:*", "limit_usd": -5}, "above 0"),
        ({"scope": "t:*", "limit_usd": True}, "number"),
        ({"scope": "t:*", "limit_usd": 1, "on_exceed": "explode"}, "on_exceed"),
        ({"scope": "t:*", "limit_usd": 1, "on_exceed": "downgrade"}, "downgrade_to"),
        ({"scope": "t:*", "limit_usd": 1, "thresholds": (1.5,)}, "fractions"),
        ({"scope": "t:*", "limit_usd": 1, "period": ""}, "period"),
    ],
)
def test_bad_budgets(kwargs, match):
    with pytest.raises(lt.ConfigError, match=match):
        Budget(**kwargs)


def test_bad_budget_period_and_duplicates():
    with pytest.raises(lt.ConfigError, match="two budgets"):
        lt.Limiter({"requests": "1/s"}, budgets=[Budget("t:*", 1), Budget("t:*", 2)])


def _spend_worker(args):
    state_name, n = args
    lim = lt.Limiter({"requests": "1000/s"}, budgets=[Budget("team:*", 1.0, "day")], state=lt.SharedState(state_name))
    admitted = 0
    for _ in range(n):
        try:
            lim.acquire(["team:a"], budget_usd=0.01, timeout=0).commit()
            admitted += 1
        except lt.BudgetExceeded:
            pass
    return admitted


@pytest.mark.skipif(not hasattr(lt, "SharedState"), reason="shared memory state not built")
def test_concurrent_processes_never_overspend():
    name = f"budget-test-{uuid.uuid4().hex}"
    ctx = mp.get_context("spawn")
    try:
        with ctx.Pool(4) as pool:
            admitted = sum(pool.map(_spend_worker, [(name, 60)] * 4))
    finally:
        lt.SharedState.remove(name)
    assert admitted == 100  # $1.00 / $0.01, exactly


def test_call_counts_the_request_body_before_it_leaves():
    guard, _ = make([Budget("team:*", 1.0, "day")], limits={"requests": "1000/s", "tokens": "1M/min"})
    body = {"model": MINI, "max_tokens": 500, "messages": [{"role": "user", "content": "Say hello in French."}]}
    expected = lt.estimate(body)
    call = guard.call("team:a", body=body)
    assert call.model == MINI
    assert call.reservation.reserved["tokens"] == expected.input_tokens + 500
    call.cancel()
    fast, _ = make([Budget("team:*", 1.0, "day")], limits={"tokens": "1M/min"}, exact_tokens=False)
    fast.call("team:a", body=body).cancel()
    with pytest.raises(ValueError, match="model is required"):
        guard.call("team:a", input_tokens=10)


def test_rebuild_runs_once_per_limiter_and_replays_rolling_windows(tmp_path):
    ledger = lt.Ledger(tmp_path / "ledger")
    clock = FakeClock()
    budgets = [lt.Budget("team:*", 10.0, "day"), lt.Budget("user:*", 10.0, "10h")]
    lim = lt.Limiter({"requests": "1000/s"}, budgets=budgets, clock=clock)
    guard = Guard(lim, ledger=ledger)
    start = clock.wall
    # $4 spent 8 hours ago, $2 spent now, by user:u of team:t.
    ledger.record(model=MINI, cost_micros=4_000_000, team="t", user="u", time=start - 8 * 3600)
    ledger.record(model=MINI, cost_micros=2_000_000, team="t", user="u", time=start)
    fresh = lt.Limiter({"requests": "1000/s"}, budgets=budgets, clock=clock)
    Guard(fresh, ledger=ledger)
    Guard(fresh, ledger=ledger)  # a second guard on the same limiter does not charge again
    assert spent(Guard(fresh, ledger=ledger, rebuild_from_ledger=False), "team:t") == pytest.approx(2.0)
    # The day started at the FakeClock's start (midnight), so only the $2 counts for the team;
    # the rolling 10h window has drained $8 of the $4 spent 8 h ago, leaving $2 + $0.
    assert spent(Guard(fresh, ledger=ledger, rebuild_from_ledger=False), "user:u") == pytest.approx(2.0)
    ledger.close()
    assert guard.limiter is lim


def test_a_rolling_budget_rejects_instead_of_queueing():
    lim = lt.Limiter({"requests": "100/s"}, budgets=[Budget("user:*", 1, "1h")], clock=FakeClock())
    lim.acquire("user:1", budget_usd=0.8).commit()
    with pytest.raises(lt.BudgetExceeded):
        lim.acquire("user:1", budget_usd=0.8)  # no timeout: still not queued for 36 minutes


def test_report_shows_the_policy_files_budgets(tmp_path, capsys):
    from llmthrottle.cli import main

    ledger = lt.Ledger(tmp_path / "ledger")
    ledger.record(model=MINI, cost_micros=300_000, team="a", tags={"org": "acme"})
    ledger.record(model=MINI, cost_micros=100_000, team="b", tags={"org": "acme"})
    ledger.close()
    config = tmp_path / "llmthrottle.toml"
    config.write_text(
        '[[budgets]]\nscope = "team:*"\nlimit_usd = 1\nperiod = "day"\n'
        '[[budgets]]\nscope = "org:acme"\nlimit_usd = 10\nperiod = "month"\n'
    )
    assert main(["report", "--ledger", str(tmp_path / "ledger"), "--config", str(config), "--format", "json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    statuses = {b["name"]: b for b in report["budgets"]}
    assert set(statuses) == {"team:a", "team:b", "org:acme"}
    assert statuses["team:a"]["spent_micros"] == 300_000 and statuses["team:a"]["limit_micros"] == 1_000_000
    assert statuses["org:acme"]["spent_micros"] == 400_000


class ProviderError(Exception):
    """Stands for an SDK's exception (e.g. openai.RateLimitError) leaving the block."""


def test_every_ending_of_a_call_is_recorded_with_its_outcome_and_charge(tmp_path):
    ledger = lt.Ledger(tmp_path / "ledger")
    guard, _ = make([Budget("team:*", 1.0, "day")], ledger=ledger)
    worst = guard.prices.worst_case_cost(MINI, 1000, 2000, None)
    with guard.call("team:a", model=MINI, input_tokens=1000, max_output_tokens=2000) as call:
        call.finish(usage(1000, 10))
    with guard.call("team:a", model=MINI, input_tokens=1000, max_output_tokens=2000):
        pass  # left without finish: the provider may have billed it
    with pytest.raises(ProviderError):
        with guard.call("team:a", model=MINI, input_tokens=1000, max_output_tokens=2000):
            raise ProviderError("429")
    guard.call("team:a", model=MINI, input_tokens=1000, max_output_tokens=2000).cancel()
    ledger.flush()
    records = list(ledger.records())
    assert [(r.outcome, r.cost_micros) for r in records] == [
        ("ok", 150 + 6),
        ("unfinished", worst),
        ("error", 0),
        ("cancelled", 0),
    ]
    assert records[1].input_tokens == 1000 and records[1].output_tokens == 2000
    assert records[2].tags["error"] == "ProviderError"
    assert all(r.team == "a" for r in records)
    # The budget was charged exactly what the ledger holds.
    assert spent(guard, "team:a") == pytest.approx(ledger.spend() / 1e6)
    ledger.close()


def test_a_call_whose_retry_is_refused_is_still_recorded(tmp_path):
    """`retry` gives the refused attempt's room back before it asks for the next: when that is
    refused (the room went to another call meanwhile), the call still ends with one record,
    however it ends (`fail`, leaving the `with` block on the error, `unfinished`)."""
    ledger = lt.Ledger(tmp_path / "ledger")
    guard = lt.Guard(lt.Limiter({"requests": "1/min"}), ledger=ledger)
    call = guard.call("team:a", model=MINI, input_tokens=10, max_output_tokens=10)
    guard.limiter.charge("team:a", requests=1)  # another call took the room meanwhile
    with pytest.raises(lt.RateLimited):
        call.retry(timeout=0)
    call.fail("rate_limited", status=429)
    call.fail("rate_limited", status=429)  # once only
    call.unfinished()  # recorded already
    with pytest.raises(lt.RateLimited), guard.call("team:b", model=MINI, input_tokens=10, max_output_tokens=10) as b:
        guard.limiter.charge("team:b", requests=1)
        b.retry(timeout=0)
    c = guard.call("team:c", model=MINI, input_tokens=10, max_output_tokens=10)
    guard.limiter.charge("team:c", requests=1)
    with pytest.raises(lt.RateLimited):
        c.retry(timeout=0)
    c.unfinished()
    ledger.flush()
    assert [(r.team, r.outcome, r.cost_micros) for r in ledger.records()] == [
        ("a", "rate_limited", 0),
        ("b", "error", 0),
        ("c", "error", 0),
    ]
    ledger.close()


_PRICE = st.decimals(min_value="0", max_value="200", places=6, allow_nan=False, allow_infinity=False)


@settings(max_examples=25, deadline=None)
@given(
    input_price=_PRICE,
    output_price=_PRICE,
    calls=st.lists(st.tuples(st.integers(0, 200_000), st.integers(0, 50_000)), min_size=1, max_size=40),
)
def test_budget_spend_equals_the_ledgers_sum_to_the_micro_dollar(tmp_path_factory, input_price, output_price, calls):
    prices = lt.PriceTable.default().with_fallback(input=str(input_price), output=str(output_price))
    limiter = lt.Limiter({"requests": "1M/s"}, budgets=[Budget("team:*", 10**6, "month")], clock=FakeClock())
    with lt.Ledger(tmp_path_factory.mktemp("ledger")) as ledger:
        guard = Guard(limiter, prices=prices, ledger=ledger)
        for prompt, completion in calls:
            guard.call("team:a", model="house-model", input_tokens=prompt, max_output_tokens=completion).finish(
                usage(prompt, completion)
            )
        ledger.flush()
        assert round(spent(guard, "team:a") * 1_000_000) == ledger.spend()


def test_one_period_grammar_for_budgets_quotas_config_and_reports(tmp_path):
    from llmthrottle.report import parse_time
    from llmthrottle.sidecar.config import parse_config

    # The same word is the same period for a budget and for a quota.
    for word in ("day", "daily", "d", " DAY "):
        assert lt.parse_period(word) == ("day", 0.0)
        assert Budget("t:*", 1, word).calendar
        lt.Limiter({"calls": {"quota": 5, "per": word}})
    for word, kind in (("weekly", "week"), ("w", "week"), ("monthly", "month"), ("mo", "month")):
        assert lt.parse_period(word) == (kind, 0.0)
    assert lt.parse_period("30d") == ("duration", 30 * 86400.0)
    assert not Budget("t:*", 1, "30d").calendar and Budget("t:*", 1, "30d").window_s == 30 * 86400
    # An unknown period fails where it was written, naming the accepted forms.
    forms = r"use day, week or month \(calendar, UTC"
    with pytest.raises(lt.ConfigError, match=r"Budget\('t:\*'\): unknown period \"fortnight\": " + forms):
        Budget("t:*", 1, "fortnight")
    with pytest.raises(lt.ConfigError, match=r"unknown period \"fortnight\": " + forms):
        lt.Limiter({"calls": {"quota": 5, "per": "fortnight"}})
    with pytest.raises(lt.ConfigError, match=r"<config>:4: budgets.0.period: unknown period \"fortnight\""):
        parse_config('[limits]\nrequests = "5/s"\n[[budgets]]\nperiod = "fortnight"\nscope = "t:*"\nlimit_usd = 1\n')
    # A calendar budget's period starts where the engine's quota period starts.
    now = 1_796_083_200 + 5 * 86400 + 3600.5  # 2026-12-01 is a Tuesday; now is Sunday 01:00:00.5
    assert Budget("t:*", 1, "month").period_start(now) == 1_796_083_200
    assert Budget("t:*", 1, "day").period_start(now) == 1_796_083_200 + 5 * 86400
    assert Budget("t:*", 1, "week").period_start(now) == 1_796_083_200 - 86400  # Monday 2026-11-30
    assert Budget("t:*", 1, "12h").period_start(now) == now - 12 * 3600
    # Reports read the same grammar: a duration before now, or the current calendar period.
    assert parse_time("2w", now) == now - 14 * 86400
    assert parse_time("90min", now) == now - 5400
    assert parse_time("month", now) == 1_796_083_200
    assert parse_time("2026-12-01", now) == 1_796_083_200
    with pytest.raises(Exception, match="a duration such as 30d"):
        parse_time("fortnight", now)


def test_a_rolling_rebuild_keeps_spend_above_the_limit(tmp_path):
    ledger = lt.Ledger(tmp_path / "ledger")
    clock = FakeClock()
    budgets = [lt.Budget("user:*", 10.0, "10h")]
    # $12 spent 1 h ago on a $10 / 10 h budget: $1 drained, $11 still owed, beyond the limit.
    ledger.record(model=MINI, cost_micros=12_000_000, user="u", time=clock.wall - 3600)
    fresh = lt.Limiter({"requests": "1000/s"}, budgets=budgets, clock=clock)
    Guard(fresh, ledger=ledger)
    with pytest.raises(lt.BudgetExceeded):
        fresh.acquire("user:u", budget_usd=0.5, timeout=0)
    clock.advance(1.4 * 3600)  # $1.40 more drained: $9.60 owed, $0.40 free
    fresh.acquire("user:u", budget_usd=0.39, timeout=0).commit()
    ledger.close()


@settings(max_examples=300, deadline=None)
@given(micros=st.integers(0, 10**12))
def test_a_cost_reaches_a_budget_as_exact_micro_dollars_with_no_float(micros: int) -> None:
    from llmthrottle.budget import exact_dollars

    text = exact_dollars(micros)
    assert "e" not in text and len(text.split(".")[1]) == 6
    limiter = lt.Limiter({"requests": "1/s"}, budgets=[Budget("t:*", 10**7)])
    assert limiter._usage(budget_usd=text) == [("budget_usd", micros)]


def test_a_guard_reserves_and_charges_the_exact_micro_dollars() -> None:
    # 123 µ$ was once reserved as 124 µ$ (a float rounded up): now it travels as "0.000123".
    prices = lt.PriceTable.default().with_fallback(input="0.123", output="0")
    guard, _ = make([Budget("team:*", 1)], prices=prices)
    call = guard.call("team:a", model="house-model", input_tokens=1000, max_output_tokens=0)
    assert round(spent(guard, "team:a") * 1_000_000) == 123
    call.finish(usage(1000, 0))
    assert round(spent(guard, "team:a") * 1_000_000) == 123
    with pytest.raises(lt.InvalidInput, match="decimal number of dollars"):
        guard.limiter.try_acquire("team:a", budget_usd="1e-3")
