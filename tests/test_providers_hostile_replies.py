"""Replies a provider (or a proxy before it) gets wrong, through `lt.wrap` with the real SDKs: a
usage object with counts no price table can read, a stream cut off after its usage, a
Responses stream that ended short of `response.completed`. The call still reaches the caller,
and it is in the ledger at the usage the provider reported, or at its worst case when none can
be read. Served by a real HTTP server on loopback (`provider_helpers.CannedServer`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
from llmthrottle.ledger.store import MAX_COST_MICROS

openai = pytest.importorskip("openai")

HELLO = [{"role": "user", "content": "hello there"}]
REPORTED = {"prompt_tokens": 5000, "completion_tokens": 900}


@pytest.fixture
def server() -> Iterator[CannedServer]:
    with canned_server() as canned:
        yield canned


def _events(*payloads: Any) -> bytes:
    return b"".join(b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n" for p in payloads)


def _guard(ledger: Any) -> Any:
    return lt.Guard(lt.Limiter({"requests": "1000/s"}), ledger=ledger)


def _worst_case(max_tokens: int) -> int:
    counted = lt.estimate({"model": MINI, "messages": HELLO, "max_tokens": max_tokens})
    return lt.worst_case_cost(MINI, counted.input_tokens, counted.max_output_tokens)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 7},
        {"prompt_tokens": "11", "completion_tokens": 7},
        {"prompt_tokens": 11, "completion_tokens": 10**30},
        {"prompt_tokens": 11, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 12}},
        {},
    ],
)
def test_a_reply_whose_usage_cannot_be_priced_reaches_the_caller_and_is_charged_its_worst_case(
    server: CannedServer, ledger: Any, usage: dict[str, Any]
) -> None:
    """The provider answered, and billed the call for what its usage does not say: the caller
    gets the reply, the budget is charged and the ledger records the call at its worst case
    (`unfinished`), and the reply is not kept by the response cache (the next identical
    request is sent)."""
    server.reply = {**CHAT_REPLY, "usage": usage}
    limiter = lt.Limiter({"requests": "1000/s"}, budgets=[lt.Budget("team:*", 10, "day")])
    guard = lt.Guard(limiter, ledger=ledger)
    with lt.wrap(
        openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0),
        guard=guard,
        keys=["team:a"],
        cache=lt.ResponseCache(),
    ) as client:
        for _ in range(2):
            assert client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20).choices
    assert len(server.encodings) == 2
    worst = _worst_case(20)
    assert [(r.outcome, r.cost_micros, r.tags["usage"]) for r in records(ledger)] == [
        ("unfinished", worst, "unreadable")
    ] * 2
    [budget] = [s for s in limiter.status("team:a") if s.dimension == "budget_usd"]
    assert round(budget.used * 1_000_000) == 2 * worst


def test_a_stream_whose_usage_cannot_be_priced_is_charged_its_worst_case(server: CannedServer, ledger: Any) -> None:
    server.content_type = "text/event-stream"
    server.reply = _events(
        {"choices": [{"index": 0, "delta": {"content": "hi"}}]},
        {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": -7}},
        b"[DONE]",
    )
    with lt.wrap(
        openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0),
        guard=_guard(ledger),
    ) as client:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20, stream=True)
            if c.choices
        )
    assert text == "hi"
    [record] = records(ledger)
    assert (record.outcome, record.cost_micros) == ("unfinished", _worst_case(20))


def test_a_stream_cut_off_after_its_usage_is_settled_with_it(server: CannedServer, ledger: Any) -> None:
    """OpenAI writes a stream's usage after everything it counts: a stream that ends without
    `[DONE]` after it is charged what the provider reported, not the input estimate."""
    server.content_type = "text/event-stream"
    server.reply = _events({"choices": [{"index": 0, "delta": {"content": "hi"}}]}, {"choices": [], "usage": REPORTED})
    with lt.wrap(
        openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0),
        guard=_guard(ledger),
    ) as client:
        for _ in client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20, stream=True):
            pass
    [record] = records(ledger)
    assert (record.input_tokens, record.output_tokens) == (5000, 900)
    assert record.cost_micros == lt.cost(MINI, REPORTED).total_micros


@pytest.mark.parametrize("end", ["response.incomplete", "response.failed"])
def test_a_responses_stream_that_ends_short_is_priced_at_the_usage_it_reports(
    server: CannedServer, ledger: Any, end: str
) -> None:
    """A Responses stream ends with `response.incomplete` when it reaches `max_output_tokens`
    (or `response.failed`, recorded as an error), each with the usage the provider billed."""
    usage = {"input_tokens": 5000, "output_tokens": 900, "total_tokens": 5900}
    response = {"id": "resp_1", "object": "response", "model": MINI, "status": end.split(".")[1], "output": []}
    server.content_type = "text/event-stream"
    server.reply = _events(
        {"type": "response.created", "response": {**response, "status": "in_progress", "usage": None}},
        {"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0, "delta": "hi"},
        {"type": end, "response": {**response, "usage": usage}},
    )
    with lt.wrap(
        openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0),
        guard=_guard(ledger),
    ) as client:
        kinds = [
            event.type for event in client.responses.create(model=MINI, input="hi", max_output_tokens=900, stream=True)
        ]
    assert kinds[-1] == end
    [record] = records(ledger)
    outcome = "ok" if end == "response.incomplete" else "error"
    assert (record.outcome, record.input_tokens, record.output_tokens) == (outcome, 5000, 900)
    assert record.cost_micros == lt.cost(MINI, usage).total_micros


def test_a_limit_announced_beyond_what_a_limiter_keeps_is_not_learned(server: CannedServer, opened: list[Any]) -> None:
    """A limit no caller could reach (more than one request per nanosecond) is what a provider
    that means none may announce: it is not learned, the limits beside it are, and the calls go
    on (it used to be refused on every call)."""
    server.headers = {
        "x-ratelimit-limit-requests": "1000000000000",
        "x-ratelimit-remaining-requests": "999999999999",
        "x-ratelimit-reset-requests": "1ms",
        "x-ratelimit-limit-tokens": "100000",
        "x-ratelimit-remaining-tokens": "100000",
        "x-ratelimit-reset-tokens": "1ms",
    }
    client = lt.wrap(openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0))
    opened.append(client)
    for _ in range(2):
        assert client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20).choices
    learned = client._client._transport.settings.learned
    [known] = learned._learned.values()
    assert known.limits == (("tokens", 100_000, 60.0),)


def test_a_reset_announced_past_max_retry_after_s_pauses_no_longer(server: CannedServer, ledger: Any) -> None:
    """One reply saying a limit is used up until a reset hours away (a garbled header, or a
    daily limit) pauses the provider key for `max_retry_after_s` at most, as a 429's
    Retry-After does; the next call then finds out for itself."""
    server.headers = {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "999999999h",
    }
    with lt.wrap(
        openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0),
        guard=_guard(ledger),
        max_retry_after_s=2,
    ) as client:
        for _ in range(2):
            assert client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20).choices
    first, second = records(ledger)
    assert first.tags["waited_s"] == 0 and 0 < second.tags["waited_s"] <= 2


def test_a_whole_reply_to_a_stream_request_is_priced_as_a_whole_reply(server: CannedServer, ledger: Any) -> None:
    """A provider (or a proxy) that ignores `stream` and answers with one JSON reply: read and
    priced as the whole reply it is, not as a stream that never sent an event."""
    server.reply = {**CHAT_REPLY, "usage": REPORTED}
    with lt.wrap(
        openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0), guard=_guard(ledger)
    ) as client:
        for _ in client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=1000, stream=True):
            pass
    [record] = records(ledger)
    assert (record.outcome, record.input_tokens, record.output_tokens) == ("ok", 5000, 900)
    assert record.cost_micros == lt.cost(MINI, REPORTED).total_micros


def test_a_call_too_large_for_a_learned_limit_asks_the_provider_again_once_a_minute(
    server: CannedServer, opened: list[Any]
) -> None:
    """A limit learned from one reply (garbled, or raised since) is not kept for good: a call
    too large for it is sent all the same, at most once a minute per provider key, and its
    reply teaches the limits again. While the provider keeps saying it, the other calls too
    large for it are refused before they leave."""
    from llmthrottle.providers.learned import LearnedLimits

    tiny = {"x-ratelimit-limit-tokens": "10", "x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "1s"}
    for provider_keeps_it in (True, False):
        server.encodings.clear()
        server.headers = tiny
        client = lt.wrap(openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0))
        opened.append(client)
        client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20)  # teaches "10 a minute"
        if not provider_keeps_it:
            server.headers = {**tiny, "x-ratelimit-limit-tokens": "100000", "x-ratelimit-remaining-tokens": "99000"}
        client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20)  # asks again
        if provider_keeps_it:
            with pytest.raises(lt.ExceedsCapacity):
                client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20)
            assert len(server.encodings) == 2
        else:
            learned: LearnedLimits = client._client._transport.settings.learned
            [known] = learned._learned.values()
            assert len(server.encodings) == 2 and dict((d, n) for d, n, _ in known.limits) == {"tokens": 100_000}


_COUNT = st.one_of(
    st.integers(min_value=-5, max_value=10**13),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
_DETAILS = st.dictionaries(
    st.sampled_from(["cached_tokens", "reasoning_tokens", "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"]),
    _COUNT,
    max_size=2,
)
_USAGE_FIELDS = [
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "input_tokens_details",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
]
_USAGES = st.one_of(
    st.dictionaries(st.sampled_from(_USAGE_FIELDS), st.one_of(_COUNT, _DETAILS), max_size=6),
    _COUNT,
    st.fixed_dictionaries({"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)}),
    st.fixed_dictionaries({"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6)}),
)


@settings(max_examples=150, deadline=None)
@given(family=st.sampled_from(["openai", "anthropic"]), usage=_USAGES, streaming=st.booleans())
def test_any_usage_a_reply_carries_ends_the_call_in_one_record(family: str, usage: Any, streaming: bool) -> None:
    """Whatever a reply says its usage is, the call it answers ends in exactly one ledger record,
    and no exception: at the usage's price when the price table can read it (and it is no more
    than one call can cost); a whole reply
    whose usage it cannot read, at the call's worst case (`unfinished`); a stream, at what it
    told of its usage and received, or at its worst case."""
    import tempfile

    import httpx2

    from llmthrottle.providers.call import CallPlan, Settings
    from llmthrottle.providers.learned import LearnedLimits
    from llmthrottle.providers.pause import ProviderPause

    model, path = (MINI, "/v1/chat/completions") if family == "openai" else ("claude-sonnet-4-5", "/v1/messages")
    request = {"model": model, "messages": HELLO, "max_tokens": 50, "stream": streaming}
    with tempfile.TemporaryDirectory() as directory, lt.Ledger(directory) as ledger:
        guard = _guard(ledger)
        settings = Settings(guard=guard, pause=ProviderPause(), learned=LearnedLimits())
        plan = CallPlan.start(settings, "POST", "h", path, httpx2.Headers(), json.dumps(request).encode())
        assert plan is not None
        plan.call = guard.call(plan.keys(), **plan.admit_arguments())
        plan.sending()
        plan.observe(200, httpx2.Headers())
        if not streaming:
            plan.settle_whole(json.dumps({"id": "x", "usage": usage}).encode())
        else:
            reader = plan.reader()
            if family == "openai":
                reader.feed(_events({"choices": [], "usage": usage}, b"[DONE]"))
            else:
                events = [{"type": "message_start", "message": {"usage": usage}}, {"type": "message_stop"}]
                reader.feed(b"".join(b"event: x\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events))
            reader.finish()
            plan.settle(reader)
        [record] = records(ledger)
    counted = lt.estimate(request, provider=family)
    worst = lt.worst_case_cost(model, counted.input_tokens, counted.max_output_tokens)
    try:
        priced: int | None = lt.cost(model, usage, provider=family).total_micros
    except (ValueError, TypeError):
        priced = None
    if priced is not None and priced > MAX_COST_MICROS:
        priced = None  # more than one call can cost: a garbled count
    # An Anthropic stream's input is read from its usage only when it is a count.
    told = family == "openai" or (isinstance(usage, dict) and type(usage.get("input_tokens")) is int)
    if priced is not None and (not streaming or told):
        assert (record.outcome, record.cost_micros) == ("ok", priced)
    elif not streaming:
        assert (record.outcome, record.cost_micros) == ("unfinished", worst)
    else:
        assert record.outcome == "ok" or (record.outcome, record.cost_micros) == ("unfinished", worst)


def test_a_garbled_count_holds_the_learned_limits_for_a_window_at_most(server: CannedServer) -> None:
    """One reply claiming more output than any call can produce charges the provider key's
    learned limit at most its whole limit (a window's wait), never years of debt."""
    server.reply = {**MESSAGE_REPLY, "usage": {"input_tokens": 11, "output_tokens": 10**11}}
    server.headers = OUTPUT_LIMIT_2000
    output = learned_output_after(server, calls=1)
    assert output.used <= 2_000 and output.reset_after <= 60
