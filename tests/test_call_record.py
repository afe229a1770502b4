"""One ledger record per call, whichever way the call came in: Guard in this process, Guard
over the sidecar (the sidecar keeps the ledger), or a bare sidecar commit naming its model and
tokens (the sidecar prices it). Money stays integer micro-dollars from the price to the ledger."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sidecar_helpers import ServerProcess, start_server

import llmthrottle as lt
from llmthrottle.ledger.call import call_record

MINI = "gpt-4o-mini"  # $0.15 input, $0.60 output per 1M tokens
CONFIG = '[limits."*"]\nrequests = "1M/s"\n[[budgets]]\nscope = "team:*"\nlimit_usd = 1000000\nperiod = "month"\n'
COLUMNS = (
    "model",
    "provider",
    "tenant",
    "user",
    "team",
    "feature",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_micros",
    "outcome",
)
SIDECAR_TAGS = ("namespace", "usage")  # what only the sidecar knows: its namespace, the amounts


@pytest.fixture(scope="module")
def sidecar() -> Iterator[tuple[ServerProcess, lt.Sidecar]]:
    with tempfile.TemporaryDirectory(prefix="lt-record-") as directory:
        server = start_server(directory, CONFIG)
        client = lt.Sidecar(server.socket)
        try:
            yield server, client
        finally:
            client.close()
            server.stop()


def sidecar_records(server: ServerProcess, team: str, count: int) -> list[lt.UsageRecord]:
    """The sidecar's records of `team`, once its flusher has stored `count` of them."""
    deadline = time.monotonic() + 20
    with lt.Ledger(os.path.join(server.directory, "llmthrottle", "ledger"), readonly=True) as ledger:
        while True:
            records = list(ledger.records(team=team))
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.02)


def columns(record: lt.UsageRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in COLUMNS}


def test_the_same_call_is_the_same_record_whichever_way_it_came_in(sidecar: Any, tmp_path: Any) -> None:
    server, client = sidecar
    team = f"t{uuid.uuid4().hex[:8]}"
    keys = [f"team:{team}", "user:42", "org:acme"]
    usage = {"prompt_tokens": 1200, "completion_tokens": 80}

    with lt.Ledger(tmp_path / "ledger") as ledger:
        guard = lt.Guard(lt.Limiter({"requests": "1M/s"}, budgets=[lt.Budget("team:*", 1000)]), ledger=ledger)
        guard.call(keys, model=MINI, input_tokens=1200, max_output_tokens=100, feature="chat").finish(usage)
        ledger.flush()
        [direct] = ledger.records()

    over_sidecar = lt.Guard(lt.Limiter(None, state=client))  # no ledger here: the sidecar records
    over_sidecar.call(keys, model=MINI, input_tokens=1200, max_output_tokens=100, feature="chat").finish(usage)
    # A bare commit from any language: a model and its tokens, no cost (the sidecar prices it).
    reservation = lt.Limiter(None, state=client).acquire(keys)
    reservation.commit(model=MINI, feature="chat", input_tokens=1200, output_tokens=80)
    records = sidecar_records(server, team, 2)

    assert direct.cost_micros == 180 + 48 and (direct.team, direct.user, direct.feature) == (team, "42", "chat")
    assert direct.tags == {"org": "acme"}
    assert [columns(r) for r in records] == [columns(direct)] * 2
    for record in records:
        assert {k: v for k, v in record.tags.items() if k not in SIDECAR_TAGS} == direct.tags


def test_the_builder_prices_what_has_no_cost_and_flags_what_it_cannot_price() -> None:
    record = call_record(
        ["tenant:acme", "plain"],
        outcome="ok",
        latency_s=0.5,
        model=MINI,
        tokens={"input_tokens": 1000, "output_tokens": 0},
    )
    assert (record["tenant"], record["cost_micros"], record["tags"]) == ("acme", 150, {"key": "plain"})
    unknown = call_record(
        [], outcome="ok", latency_s=None, model="no-such-model", tokens={"input_tokens": 5}, unpriced_micros=7
    )
    assert (unknown["cost_micros"], unknown["tags"]) == (7, {"unpriced": True})
    given_cost = call_record(
        [], outcome="error", latency_s=None, model=MINI, cost_micros=0, tokens={"input_tokens": 1000}
    )
    assert (given_cost["cost_micros"], given_cost["tags"]) == (0, None)
    # An explicit tag fills its column and wins over the key of the same field.
    assert call_record(["team:a"], outcome="ok", latency_s=None, tags={"team": "b"})["team"] == "b"


@settings(max_examples=40, deadline=None)
@given(
    input_price=st.decimals(min_value="0.01", max_value="100", places=3),
    output_price=st.decimals(min_value="0.01", max_value="100", places=3),
    calls=st.lists(st.tuples(st.integers(0, 200_000), st.integers(0, 50_000)), min_size=1, max_size=15),
)
def test_budget_spend_equals_the_sidecars_ledger_to_the_micro_dollar(
    sidecar: Any, input_price: Any, output_price: Any, calls: Any
) -> None:
    server, client = sidecar
    team = f"t{uuid.uuid4().hex[:8]}"
    prices = lt.PriceTable.default().with_fallback(input=str(input_price), output=str(output_price))
    limiter = lt.Limiter(None, state=client)
    guard = lt.Guard(limiter, prices=prices)
    expected = 0
    for prompt, completion in calls:
        cost = guard.call(
            f"team:{team}", model="house-model", input_tokens=prompt, max_output_tokens=completion
        ).finish({"prompt_tokens": prompt, "completion_tokens": completion})
        expected += cost.total_micros
    records = sidecar_records(server, team, len(calls))
    spent = next(s.used for s in limiter.status(f"team:{team}") if s.dimension == "budget_usd")
    assert sum(r.cost_micros for r in records) == expected == round(spent * 1_000_000)
