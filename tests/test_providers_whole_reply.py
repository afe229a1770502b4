"""A whole (non-streaming) reply through `lt.wrap`: read by the wrapper before the caller gets
it, decoded as the SDK reads it (so the provider may compress it), and, when it is cut off after
its status or its usage cannot be read, charged and recorded at its worst case. Served by a real
HTTP server on loopback (`provider_helpers.CannedServer`) that answers every request with one
canned reply, compressed or cut short on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from provider_helpers import (
    CHAT_REPLY,
    MESSAGE_REPLY,
    MINI,
    OUTPUT_LIMIT_2000,
    CannedServer,
    canned_server,
    learned_output_after,
    records,
)

import llmthrottle as lt

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def server() -> Iterator[CannedServer]:
    with canned_server() as canned:
        yield canned


def _guard(ledger: Any, limiter: Any = None) -> Any:
    return lt.Guard(limiter or lt.Limiter({"requests": "1000/s"}), ledger=ledger)


def test_a_compressed_whole_reply_is_read_as_the_sdk_reads_it(
    server: CannedServer, ledger: Any, opened: list[Any]
) -> None:
    """A whole reply is read decoded: the request keeps the SDK's accept-encoding (only a stream
    read as it passes asks for identity), and a gzip reply is priced from its usage."""
    server.compress = True
    client = lt.wrap(openai.OpenAI(base_url=f"{server.url}/v1", api_key="k"), guard=_guard(ledger))
    opened.append(client)
    reply = client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20)
    assert reply.usage is not None and reply.usage.completion_tokens == 7
    assert "gzip" in (server.encodings[0] or "")
    [record] = records(ledger)
    assert (record.outcome, record.input_tokens, record.output_tokens) == ("ok", 11, 7)
    assert record.cost_micros == lt.cost(MINI, CHAT_REPLY["usage"]).total_micros


def test_an_anthropic_whole_reply_gives_back_what_it_did_not_use(server: CannedServer) -> None:
    """`lt.wrap` alone: the output limit learned from the headers is reconciled with each
    reply's usage, read by the wrapper from a compressed whole reply. The first call, sent
    before the limits were known, is charged the 7 it used when its reply is read; the second
    reserves 500 and keeps the 7 it used."""
    server.reply, server.compress = MESSAGE_REPLY, True
    server.headers = OUTPUT_LIMIT_2000
    output = learned_output_after(server)
    # 14 (507 without the refund), less what refilled since (2,000 a minute).
    assert 2_000 - output.remaining <= 14


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_whole_reply_cut_off_after_its_status_is_recorded_at_its_worst_case(
    server: CannedServer, ledger: Any, asynchronous: bool
) -> None:
    """The provider answered (and billed the call) but the body never arrived whole: the
    caller gets the connection error, and the call is charged to the budget and recorded at
    its worst case, outcome `unfinished`, never refunded at $0."""
    server.cut_after = 20
    limiter = lt.Limiter({"requests": "1000/s"}, budgets=[lt.Budget("team:*", 10, "day")])
    guard = _guard(ledger, limiter)
    if asynchronous:

        async def call() -> None:
            client = lt.wrap(
                openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0),
                guard=guard,
                keys=["team:a"],
            )
            try:
                await client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=50)
            finally:
                await client.close()

        with pytest.raises(openai.APIConnectionError):
            asyncio.run(call())
    else:
        client = lt.wrap(
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0), guard=guard, keys=["team:a"]
        )
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=50)
        client.close()
    [record] = records(ledger)
    counted = lt.estimate({"model": MINI, "messages": HELLO, "max_tokens": 50})
    worst = lt.worst_case_cost(MINI, counted.input_tokens, counted.max_output_tokens)
    assert (record.outcome, record.cost_micros, record.tags["attempts"]) == ("unfinished", worst, 1)
    [budget] = [s for s in limiter.status("team:a") if s.dimension == "budget_usd"]
    assert round(budget.used * 1_000_000) == worst


def test_a_reply_without_usage_is_recorded_at_its_worst_case(server: CannedServer, ledger: Any) -> None:
    """A successful reply whose usage cannot be read (no `usage` object) was billed for what it
    does not say: charged to the budget and recorded at its worst case, outcome `unfinished`,
    never at its input alone."""
    server.reply = {name: value for name, value in CHAT_REPLY.items() if name != "usage"}
    limiter = lt.Limiter({"requests": "1000/s"}, budgets=[lt.Budget("team:*", 10, "day")])
    with (
        lt.wrap(
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0), guard=_guard(ledger, limiter)
        ) as client,
        lt.calls() as made,
    ):
        reply = client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=50)
    assert reply.usage is None
    [record] = records(ledger)
    counted = lt.estimate({"model": MINI, "messages": HELLO, "max_tokens": 50})
    worst = lt.worst_case_cost(MINI, counted.input_tokens, counted.max_output_tokens)
    assert (record.outcome, record.cost_micros, record.tags["usage"]) == ("unfinished", worst, "unreadable")
    # The code that made the call is told what the ledger holds.
    assert [(r.outcome, r.cost_micros, r.output_tokens) for r in made] == [("unfinished", worst, 50)]


def test_an_anthropic_reply_without_usage_keeps_its_whole_output_reservation(server: CannedServer) -> None:
    """`lt.wrap` alone: a reply whose usage cannot be read gives nothing back to the output
    limit learned from the headers (the provider counted what it does not say): two calls of
    500 keep 1,000 (the usage-reading twin above keeps 14)."""
    server.reply = b'{"id": "msg_1", "type": "message", "content": []}'
    server.headers = OUTPUT_LIMIT_2000
    output = learned_output_after(server)
    assert 2_000 - output.remaining > 750  # 1,000, less what refilled since; 14 with a refund
