"""The provider layer with the real `openai` and `anthropic` SDKs, over real HTTP, against the
project's fake provider: admission, retries as the provider asks, usage priced and recorded."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import gc
import json
import pickle
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from provider_helpers import records

import llmthrottle as lt
from llmthrottle.providers.headers import announced_limits, parse_reset_duration, retry_after_s
from llmthrottle.testing import FakeProvider

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

MINI = "gpt-4o-mini"
SONNET = "claude-sonnet-4-5"
HELLO = [{"role": "user", "content": "hello there"}]


def guard_for(ledger: Any, budgets: Any = ()) -> Any:
    return lt.Guard(lt.Limiter({"requests": "1000/s"}, budgets=budgets), ledger=ledger)


def test_a_wrapped_call_is_priced_and_recorded_as_the_provider_reported(ledger: Any, opened: list[Any]) -> None:
    with FakeProvider() as provider:
        client = lt.wrap(
            openai.OpenAI(base_url=provider.openai_base_url, api_key="k"),
            guard=guard_for(ledger),
            keys=["team:support"],
        )
        opened.append(client)
        assert isinstance(client, openai.OpenAI)
        with lt.context(user="42", feature="chat"):
            reply = client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=50)
    [record] = records(ledger)
    usage = reply.usage.model_dump()
    assert record.cost_micros == lt.cost(MINI, usage).total_micros > 0
    assert (record.input_tokens, record.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert (record.outcome, record.team, record.user, record.feature) == ("ok", "support", "42", "chat")
    assert record.tags["attempts"] == 1


def test_a_429_waits_out_retry_after_and_the_caller_sees_only_the_success(ledger: Any, opened: list[Any]) -> None:
    # 60 tokens a minute, taken by another program on the same account (a bare SDK client): the
    # wrapped call cannot know, meets a 429 and waits out its Retry-After.
    with FakeProvider(tpm=60, output_tokens=5) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard_for(ledger))
        opened.append(client)
        other = openai.OpenAI(base_url=provider.openai_base_url, api_key="k", max_retries=0)
        opened.append(other)
        other.chat.completions.create(model=MINI, messages=HELLO, max_tokens=40)
        started = time.monotonic()
        reply = client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=10)
        waited = time.monotonic() - started
        assert provider.counters.rate_limited >= 1
    assert reply.choices[0].message.content
    assert waited >= 1.0  # retry-after is whole seconds
    last = records(ledger)[-1]
    assert last.outcome == "ok" and last.tags["attempts"] >= 2 and last.tags["waited_s"] >= 1.0


def test_an_async_call_that_waits_for_nothing_hands_its_failures_to_the_retry_loop() -> None:
    """Without a guard, an asyncio call's first attempt leaves from the transport itself; a 429,
    a transport error or a cancellation on it is handled as on any attempt of the loop: waited
    out and retried, retried up to `max_attempts`, or charged and reported as `unfinished`."""

    async def scenario(provider: FakeProvider, slow_provider: FakeProvider) -> list[Any]:
        other = openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k", max_retries=0)
        await other.chat.completions.create(model=MINI, messages=HELLO, max_tokens=40)  # TPM used up
        limited = lt.wrap(openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"))
        unreachable = lt.wrap(openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k"), max_attempts=3)
        slow = lt.wrap(openai.AsyncOpenAI(base_url=slow_provider.openai_base_url, api_key="k"))
        with lt.calls() as made:
            await limited.chat.completions.create(model=MINI, messages=HELLO, max_tokens=10)
            with pytest.raises(openai.APIConnectionError):
                await unreachable.chat.completions.create(model=MINI, messages=HELLO, max_tokens=10)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(slow.chat.completions.create(model=MINI, messages=HELLO, max_tokens=10), 0.5)
        for client in (other, limited, unreachable, slow):
            await client.close()
        return made

    with FakeProvider(tpm=60, output_tokens=5) as provider, FakeProvider(ttft_s=3.0) as slow_provider:
        retried, refused, cancelled = asyncio.run(scenario(provider, slow_provider))
        assert provider.counters.rate_limited >= 1 and slow_provider.counters.requests == 1
    assert (retried.outcome, retried.status) == ("ok", 200) and retried.attempts >= 2 and retried.waited_s >= 1.0
    assert (refused.outcome, refused.attempts) == ("error", 3)
    assert (cancelled.outcome, cancelled.attempts) == ("unfinished", 1)


def test_out_of_credit_is_raised_at_once_and_recorded(ledger: Any, opened: list[Any]) -> None:
    with FakeProvider(insufficient_quota=True) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard_for(ledger))
        opened.append(client)
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(model=MINI, messages=HELLO)
        assert raised.value.code == "insufficient_quota"
        assert provider.counters.requests == 1  # never retried
    [record] = records(ledger)
    assert (record.outcome, record.cost_micros, record.tags["status"]) == ("error", 0, 429)


def test_the_sdks_own_retries_never_retry_what_the_wrapper_gave_up_on(opened: list[Any]) -> None:
    """One retry loop, never two: the client given to `lt.wrap` shares its transport (its SDK
    retries on), and a wrapped client may turn them back on, yet an answer the wrapper hands
    back is not sent again by the SDK."""
    with FakeProvider(insufficient_quota=True) as provider:
        original = openai.OpenAI(base_url=provider.openai_base_url, api_key="k", max_retries=2)
        wrapped = lt.wrap(original)
        opened += [original, wrapped]
        for client in (original, wrapped.with_options(max_retries=3)):
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model=MINI, messages=HELLO)
        assert provider.counters.requests == 2


def test_the_deadline_hands_the_429_to_the_caller(ledger: Any, opened: list[Any]) -> None:
    # 100 tokens a minute: the first call leaves room, the second does not fit for ~20 s.
    with FakeProvider(tpm=100, output_tokens=5) as provider:
        client = lt.wrap(
            openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard_for(ledger), deadline_s=2.0
        )
        opened.append(client)
        other = openai.OpenAI(base_url=provider.openai_base_url, api_key="k", max_retries=0)  # another program
        opened.append(other)
        other.chat.completions.create(model=MINI, messages=HELLO, max_tokens=40)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=60)
        assert provider.counters.rate_limited == 1
    assert [(r.outcome, r.cost_micros) for r in records(ledger)][-1] == ("rate_limited", 0)


def test_a_limit_announced_as_used_up_pauses_before_anything_is_sent(ledger: Any, opened: list[Any]) -> None:
    with FakeProvider(rpm=1) as provider:
        client = lt.wrap(
            openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard_for(ledger), deadline_s=2.0
        )
        opened.append(client)
        client.chat.completions.create(model=MINI, messages=HELLO)  # announces 0 requests left for ~60 s
        with pytest.raises(lt.RateLimited) as raised:
            client.chat.completions.create(model=MINI, messages=HELLO)
        assert raised.value.limited_by == "provider" and raised.value.retry_after > 2.0
        assert (provider.counters.requests, provider.counters.rate_limited) == (1, 0)  # no 429 was earned
    assert [r.outcome for r in records(ledger)] == ["ok"]


PAUSED_WORKER = """
import sys, time, openai, llmthrottle as lt
client = lt.wrap(openai.OpenAI(base_url=sys.argv[1], api_key="k"), state=lt.SharedState(sys.argv[2]))
client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
print(time.monotonic())  # CLOCK_MONOTONIC: comparable with the parent's
client.close()
"""


def test_one_429_pauses_every_process_on_the_shared_state() -> None:
    import os
    import subprocess
    import sys
    import uuid

    name = f"pause-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    state = lt.SharedState(name)
    try:
        # 600 tokens a minute: after a 58-token call, one of 593 tokens does not fit for about 5 s.
        with FakeProvider(tpm=600, output_tokens=5) as provider:
            client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), state=state, deadline_s=0.5)
            other = openai.OpenAI(base_url=provider.openai_base_url, api_key="k", max_retries=0)  # another program
            other.chat.completions.create(model=MINI, messages=HELLO, max_tokens=50)
            other.close()
            with pytest.raises(openai.RateLimitError) as refused:  # the 429: this worker gives up...
                client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=585)
            pause_ends = time.monotonic() + float(refused.value.response.headers["retry-after"]) - 1.0
            client.close()
            assert provider.counters.rate_limited == 1
            # ...and 4 other processes on the same state wait out its Retry-After, although their
            # small calls would fit at once, so none earns a 429 of its own.
            workers = [
                subprocess.Popen(
                    [sys.executable, "-c", PAUSED_WORKER, provider.openai_base_url, name],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(4)
            ]
            finished = [float(worker.communicate(timeout=120)[0]) for worker in workers]
            assert all(worker.returncode == 0 for worker in workers)
            assert provider.counters.rate_limited == 1, provider.counters
            assert provider.counters.by_status[200] == 5
            # Their calls went out only once the pause was over (retry-after is whole seconds).
            assert min(finished) >= pause_ends, (finished, pause_ends)
    finally:
        lt.SharedState.remove(name)


def test_a_budget_refuses_before_anything_is_sent(ledger: Any, opened: list[Any]) -> None:
    with FakeProvider() as provider:
        guard = guard_for(ledger, budgets=[lt.Budget("team:*", 0.000001, "day")])
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard, keys=["team:a"])
        opened.append(client)
        with pytest.raises(lt.BudgetExceeded):
            client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=1000)
        assert provider.counters.requests == 0


@pytest.mark.parametrize("asynchronous", [False, True])
def test_llmthrottles_errors_reach_an_anthropic_caller_as_themselves(ledger: Any, asynchronous: bool) -> None:
    """Anthropic's SDK wraps any exception its transport raises in a connection error, except
    its own: llmthrottle's errors come through a wrapped client as their own class (with their
    attributes) that is also the SDK's base error, for either way of catching them."""
    guard = guard_for(ledger, budgets=[lt.Budget("team:*", 0.000001, "day")])
    with FakeProvider() as provider:
        if asynchronous:

            async def call() -> None:
                async with lt.wrap(
                    anthropic.AsyncAnthropic(base_url=provider.anthropic_base_url, api_key="k"),
                    guard=guard,
                    keys=["team:a"],
                ) as client:
                    await client.messages.create(model=SONNET, messages=HELLO, max_tokens=1000)

            with pytest.raises(lt.BudgetExceeded) as raised:
                asyncio.run(call())
        else:
            with (
                lt.wrap(
                    anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="k"), guard=guard, keys=["team:a"]
                ) as client,
                pytest.raises(lt.BudgetExceeded) as raised,
            ):
                client.messages.create(model=SONNET, messages=HELLO, max_tokens=1000)
        assert provider.counters.requests == 0
    assert isinstance(raised.value, anthropic.AnthropicError)
    assert "team:a" in str(raised.value)
    # It crosses a process boundary as the error it is (a worker's error reaches its parent).
    again = pickle.loads(pickle.dumps(raised.value))
    assert type(again) is lt.BudgetExceeded and again.args == raised.value.args


def test_a_downgrade_budget_refuses_a_wrapped_call_it_cannot_send_as_its_cheaper_model(
    ledger: Any, opened: list[Any]
) -> None:
    """A wrapped SDK sends its request as it was made: a budget at its end that would downgrade
    the call refuses it instead of admitting and pricing it as a model that is not sent."""
    budget = lt.Budget("team:*", 0.000001, "day", on_exceed="downgrade", downgrade_to=MINI)
    with FakeProvider() as provider:
        client = lt.wrap(
            openai.OpenAI(base_url=provider.openai_base_url, api_key="k"),
            guard=guard_for(ledger, budgets=[budget]),
            keys=["team:a"],
        )
        opened.append(client)
        with pytest.raises(lt.BudgetExceeded):
            client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=1000)
        assert provider.counters.requests == 0


def test_streamed_usage_is_read_without_the_caller_seeing_the_extra_chunk(ledger: Any, opened: list[Any]) -> None:
    with FakeProvider(output_tokens=7) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard_for(ledger))
        opened.append(client)
        chunks = list(client.chat.completions.create(model=MINI, messages=HELLO, stream=True))
    assert all(chunk.choices for chunk in chunks)  # no usage-only chunk the caller did not ask for
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == " tok" * 7
    [record] = records(ledger)
    assert (record.outcome, record.output_tokens) == ("ok", 7)
    assert (
        record.cost_micros == lt.cost(MINI, {"prompt_tokens": record.input_tokens, "completion_tokens": 7}).total_micros
    )


def test_a_reply_nothing_reads_reaches_the_caller_as_the_sdk_asked_for_it(opened: list[Any]) -> None:
    """`lt.wrap` alone on OpenAI, whose token limit counts the output reservation (kept whole):
    nothing reads the reply, so the request leaves as the SDK built it, with no usage chunk
    asked for and its own accept-encoding. Inside `lt.calls()` the usage is asked for and read,
    and the extra chunk still never reaches the caller."""
    import httpx2

    class Recording(httpx2.HTTPTransport):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[tuple[dict[str, Any], str | None]] = []

        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            self.sent.append((json.loads(request.content), request.headers.get("accept-encoding")))
            return super().handle_request(request)

    with FakeProvider(output_tokens=5, insufficient_quota=False) as provider:
        recording = Recording()
        sdk = openai.OpenAI(
            base_url=provider.openai_base_url, api_key="k", http_client=httpx2.Client(transport=recording)
        )
        client = lt.wrap(sdk)
        opened.extend([client, sdk])
        alone = list(client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20, stream=True))
        with lt.calls() as made:
            listened = list(client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20, stream=True))
    (first, first_encoding), (second, second_encoding) = recording.sent
    assert "stream_options" not in first and first_encoding != "identity"
    assert second["stream_options"] == {"include_usage": True} and second_encoding == "identity"
    assert alone and listened and all(chunk.usage is None for chunk in alone + listened)
    assert [(call.outcome, call.output_tokens) for call in made] == [("ok", 5)]


def test_a_stream_abandoned_half_way_is_settled_with_what_was_received(ledger: Any, opened: list[Any]) -> None:
    with FakeProvider(output_tokens=200) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard_for(ledger))
        opened.append(client)
        stream = client.chat.completions.create(model=MINI, messages=HELLO, stream=True, max_tokens=500)
        for n, _ in enumerate(stream):
            if n == 5:
                break
        stream.close()
    [record] = records(ledger)
    assert record.outcome == "cancelled"
    assert 0 < record.output_tokens < 200 and record.input_tokens > 0


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_stream_dropped_unread_is_settled_after_it_is_collected(ledger: Any, asynchronous: bool) -> None:
    """The caller raised between `create(stream=True)` and reading the stream, which it dropped
    neither read nor closed: the provider answered, so the call is settled (as a stream
    abandoned at its start) by the next wrapped call after it is collected, and reported to the
    `lt.calls()` block it was made in, not to the one it was collected in."""
    with FakeProvider(output_tokens=5) as provider:
        if asynchronous:

            async def calls() -> tuple[list[Any], list[Any]]:
                async with lt.wrap(
                    openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard_for(ledger)
                ) as client:
                    with lt.calls() as made_in:
                        await client.chat.completions.create(model=MINI, messages=HELLO, stream=True, max_tokens=50)
                    with lt.calls() as collected_in:
                        gc.collect()
                        await client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=50)
                return made_in, collected_in

            made_in, collected_in = asyncio.run(calls())
        else:
            with lt.wrap(
                openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard_for(ledger)
            ) as client:
                with lt.calls() as made_in:
                    client.chat.completions.create(model=MINI, messages=HELLO, stream=True, max_tokens=50)
                with lt.calls() as collected_in:
                    gc.collect()
                    client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=50)
        assert provider.counters.by_status == {200: 2}
    assert [r.outcome for r in made_in] == ["cancelled"] and [r.outcome for r in collected_in] == ["ok"]
    dropped, _ = records(ledger)
    assert dropped.outcome == "cancelled" and dropped.input_tokens > 0


def test_anthropic_messages_sync_and_streaming(ledger: Any, opened: list[Any]) -> None:
    with FakeProvider(output_tokens=9) as provider:
        client = lt.wrap(
            anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="k"), guard=guard_for(ledger)
        )
        opened.append(client)
        assert isinstance(client, anthropic.Anthropic)
        message = client.messages.create(model=SONNET, max_tokens=100, messages=HELLO)
        with client.messages.stream(model=SONNET, max_tokens=100, messages=HELLO) as stream:
            streamed = stream.get_final_message()
    first, second = records(ledger)
    for record, usage in ((first, message.usage), (second, streamed.usage)):
        assert (record.input_tokens, record.output_tokens) == (usage.input_tokens, usage.output_tokens)
        assert record.cost_micros == lt.cost(SONNET, usage.model_dump()).total_micros
        assert record.provider == "anthropic" and record.outcome == "ok"


def test_async_clients_are_throttled_too(ledger: Any) -> None:
    async def calls(provider: FakeProvider) -> None:
        client = lt.wrap(openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard_for(ledger))
        assert isinstance(client, openai.AsyncOpenAI)
        await asyncio.gather(
            *(client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=5) for _ in range(4))
        )
        stream = await client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=5, stream=True)
        async for _ in stream:
            pass
        aclient = lt.wrap(
            anthropic.AsyncAnthropic(base_url=provider.anthropic_base_url, api_key="k"), guard=guard_for(ledger)
        )
        await aclient.messages.create(model=SONNET, max_tokens=5, messages=HELLO)
        await client.close()
        await aclient.close()

    with FakeProvider(output_tokens=5) as provider:
        asyncio.run(calls(provider))
    assert [r.outcome for r in records(ledger)] == ["ok"] * 6


def test_wrap_refuses_what_is_not_an_sdk_client() -> None:
    with pytest.raises(TypeError, match="OpenAI or Anthropic SDK client"):
        lt.wrap(object())


# ------------------------------------------------------------------ headers


def test_retry_after_is_read_in_the_providers_order() -> None:
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_s({"retry-after": "2"}) == 2.0
    date = email.utils.formatdate(1_000_010, usegmt=True)
    assert retry_after_s({"retry-after": date}, now=1_000_000) == pytest.approx(10)
    assert retry_after_s({"x-ms-retry-after-ms": "250"}) == 0.25
    for bad in ({"retry-after": "soon"}, {"retry-after": "-1"}, {"retry-after-ms": "nan"}, {}):
        assert retry_after_s(bad) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("1h2m3s", 3723.0),
        ("", None),
        ("5x", None),
        ("s", None),
        ("1" * 100, None),
    ],
)
def test_openai_reset_durations(text: str, seconds: Any) -> None:
    assert parse_reset_duration(text) == seconds


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2400, 12, 31)),
    st.sampled_from(["Z", "+00:00", "-05:30", "+0930", ""]),
    st.sampled_from(["seconds", "milliseconds", "microseconds", "minutes"]),
)
def test_anthropic_reset_instants_read_as_python_reads_them(moment: dt.datetime, offset: str, timespec: str) -> None:
    """Anthropic's RFC 3339 resets are read by the native header reader; Python's own ISO
    parser is the reference, for every date, offset and precision an instant may carry."""
    text = moment.isoformat(timespec=timespec) + offset
    expected = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if expected.tzinfo is None:
        expected = expected.replace(tzinfo=dt.UTC)
    assert lt._native.parse_rfc3339(text) == pytest.approx(expected.timestamp(), abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=100_000, allow_nan=False))
def test_reset_durations_written_by_the_fake_provider_read_back(seconds: float) -> None:
    from llmthrottle.providers.headers import format_reset_duration

    written = format_reset_duration(seconds)
    read = parse_reset_duration(written)
    assert read is not None
    assert read == pytest.approx(seconds, rel=5e-3, abs=1e-3), written


def test_announced_limits_of_both_providers() -> None:
    openai_headers = {
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000",
        "x-ratelimit-reset-tokens": "2s",
        "x-ratelimit-limit-requests": "bogus",
    }
    assert [(a.dimension, a.limit, a.remaining, a.reset_s) for a in announced_limits("openai", openai_headers)] == [
        ("tokens", 30000, 29000, 2.0)
    ]
    anthropic_headers = {
        "anthropic-ratelimit-input-tokens-limit": "1000",
        "anthropic-ratelimit-input-tokens-remaining": "10",
        "anthropic-ratelimit-input-tokens-reset": "1970-01-12T13:46:50Z",
    }
    [announced] = announced_limits("anthropic", anthropic_headers, now=1_000_000)
    assert (announced.dimension, announced.remaining, announced.reset_s) == ("input_tokens", 10, pytest.approx(10))


def test_a_reply_is_read_into_python_only_when_it_announces_something_new() -> None:
    """Every reply announces its key's limits; one that repeats what is known, with nothing used
    up, comes back as None (the call learns nothing from it), whatever else it says."""
    import httpx2

    from llmthrottle.providers.headers import announced_news, announced_tuples

    def reply(tokens_limit: str, tokens_left: str) -> httpx2.Headers:
        return httpx2.Headers(
            [
                ("X-RateLimit-Limit-Requests", "500"),
                ("x-ratelimit-remaining-requests", "499"),
                ("x-ratelimit-reset-requests", "120ms"),
                ("x-ratelimit-limit-tokens", tokens_limit),
                ("x-ratelimit-remaining-tokens", tokens_left),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ]
        )

    known = (("requests", 500, 60.0), ("tokens", 30000, 60.0))
    assert announced_news("openai", reply("30000", "29000"), known) is None
    assert announced_news("openai", {"x-ratelimit-limit-tokens": "30000"}, ()) == []  # half a pair: nothing
    for news in (reply("40000", "29000"), reply("30000", "0")):  # a new limit; a limit used up
        assert announced_news("openai", news, known) == announced_tuples("openai", news)
    for other in ((), known[:1], (*known, ("input_tokens", 1, 60.0)), (("tokens", 30000, 60.0), known[0])):
        assert announced_news("openai", reply("30000", "29000"), other) == announced_tuples(
            "openai", reply("30000", "29000")
        )


def test_announced_limits_read_httpx_headers_in_any_case() -> None:
    import httpx2

    headers = httpx2.Headers(
        [
            ("Content-Type", "application/json"),
            ("X-RateLimit-Limit-Requests", "500"),
            ("x-ratelimit-remaining-requests", "0"),
            ("X-RATELIMIT-RESET-REQUESTS", "6m0s"),
        ]
    )
    assert announced_limits("openai", headers) == [("requests", 500, 0, 360.0, 60.0)]
    assert announced_limits("anthropic", headers) == []


def test_the_credential_a_request_presents_is_read_in_the_providers_order() -> None:
    """`authorization` before `x-api-key` before `api-key`, in any case; the first header of a
    name counts, and an empty one is passed over. Plain mappings are read alike."""
    import httpx2

    from llmthrottle.providers.headers import credential

    def raw(*pairs: tuple[bytes, bytes]) -> Any:
        return httpx2.Headers(list(pairs))

    assert credential(raw((b"Api-Key", b"a"), (b"X-API-KEY", b"x"), (b"user-agent", b"u"))) == "x"
    assert credential(raw((b"api-key", b"a"), (b"AUTHORIZATION", b"Bearer t"))) == "Bearer t"
    assert credential(raw((b"authorization", b""), (b"x-api-key", b"k1"), (b"x-api-key", b"k2"))) == "k1"
    assert credential(raw((b"content-type", b"application/json"))) is None
    assert credential({"x-api-key": "k"}) == "k"


def test_a_limit_header_that_is_not_an_ascii_count_announces_nothing() -> None:
    """Header bytes are read as latin-1, where `²` is a digit to str.isdigit but no number to
    int(): such a value is passed over, not raised from the wrapped call."""
    import httpx2

    for raw in (b"\xb2", b"1\xb2", b"\xb9\xb3"):  # ², 1², ¹³
        headers = httpx2.Headers([(b"x-ratelimit-limit-requests", raw), (b"x-ratelimit-remaining-requests", b"3")])
        assert announced_limits("openai", headers) == []
        plain = {"x-ratelimit-limit-requests": raw.decode("latin-1"), "x-ratelimit-remaining-requests": "3"}
        assert announced_limits("openai", plain) == []


def test_a_limit_used_up_waits_for_the_refill_a_call_needs_not_for_the_whole_reset() -> None:
    """OpenAI's reset is when a limit is whole again, a minute away for an empty one. A reply
    saying nothing is left pauses every worker for the refill a call like this one needs, and
    the learned limits, told the provider is empty, pace the calls after it."""
    import httpx2

    from llmthrottle.providers.call import CallPlan, Settings
    from llmthrottle.providers.learned import LearnedLimits
    from llmthrottle.providers.pause import ProviderPause

    settings = Settings(guard=None, pause=ProviderPause(), learned=LearnedLimits())
    body = json.dumps({"model": MINI, "messages": HELLO, "max_tokens": 600}).encode()
    plan = CallPlan.start(
        settings, "POST", "api.openai.com", "/v1/chat/completions", httpx2.Headers({"authorization": "Bearer k"}), body
    )
    assert plan is not None
    input_tokens, output_tokens = plan.reserved_tokens()
    needs_s = 60.0 * (input_tokens + output_tokens) / 6000

    def reply(remaining_tokens: int, reset: str) -> Any:
        return httpx2.Headers(
            {
                "x-ratelimit-limit-requests": "100",
                "x-ratelimit-remaining-requests": "50",
                "x-ratelimit-reset-requests": "30s",
                "x-ratelimit-limit-tokens": "6000",
                "x-ratelimit-remaining-tokens": str(remaining_tokens),
                "x-ratelimit-reset-tokens": reset,
            }
        )

    plan.observe(200, reply(5000, "10s"))  # learned, with room to spare
    assert settings.pause.wait_s(plan.pause_key) == 0.0
    plan.observe(200, reply(0, "60s"))  # another program on the key used the rest
    assert needs_s * 0.9 < settings.pause.wait_s(plan.pause_key) <= needs_s
    learned = settings.learned.of(plan.pause_key)
    assert learned is not None
    waited = learned.limiter.peek(plan.pause_key, tokens=input_tokens + output_tokens)
    assert not waited and needs_s * 0.9 < waited.retry_after <= needs_s * 1.01


@pytest.mark.parametrize("own_state", [True, False], ids=["own state", "given state"])
def test_a_provider_key_that_is_not_paused_admits_every_attempt_at_once(
    own_state: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looking at a pause takes nothing: thousands of attempts a second on one provider key go
    out at once, and only a recorded pause holds them. On a state of its own the pause skips
    the look for keys it never paused, up to a bound past which it always looks."""
    from llmthrottle.providers import pause as pauses

    monkeypatch.setattr(pauses, "_MAX_OWN_KEYS", 2)
    pause = pauses.ProviderPause(None if own_state else lt.InProcessState())
    assert all(pause.wait_s("api.example|k|gpt-4o") == 0.0 for _ in range(5000))
    pause.pause("api.example|k|gpt-4o", 2.0)
    assert 1.5 < pause.wait_s("api.example|k|gpt-4o") <= 2.0
    assert pause.wait_s("api.example|k|gpt-4o-mini") == 0.0
    for model in ("a", "b", "c"):  # past the bound
        pause.pause(f"api.example|k|{model}", 1.0)
    assert all(0.5 < pause.wait_s(f"api.example|k|{model}") <= 1.0 for model in ("a", "b", "c"))
    assert 1.5 < pause.wait_s("api.example|k|gpt-4o") <= 2.0
    assert pause.wait_s("api.example|k|gpt-4o-mini") == 0.0


def test_every_wrapped_client_on_one_in_process_state_sees_its_pauses() -> None:
    """Clients given the same limiter share its in-process state: a pause one records holds
    the others, although none of them looks at the state for keys never paused. What is kept
    beside the state does not keep it alive."""
    import gc
    import weakref

    from llmthrottle.providers import pause as pauses

    state = lt.InProcessState()
    first, second = pauses.ProviderPause(state), pauses.ProviderPause(state)
    assert second.wait_s("api.example|k|gpt-4o") == 0.0
    first.pause("api.example|k|gpt-4o", 2.0)
    assert 1.5 < second.wait_s("api.example|k|gpt-4o") <= 2.0
    assert pauses.ProviderPause(state).wait_s("api.example|k|gpt-4o") > 1.5
    kept = weakref.ref(state)
    del state, first, second
    gc.collect()
    assert kept() is None


MISSING_AIOHTTP = """
import builtins, sys
real = builtins.__import__
def without_aiohttp(name, *args, **kwargs):
    if name.split(".")[0] == "aiohttp":
        raise ModuleNotFoundError("No module named 'aiohttp'", name="aiohttp")
    return real(name, *args, **kwargs)
builtins.__import__ = without_aiohttp
from llmthrottle.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("argv", "extra"),
    [(["serve", "--socket", "/nonexistent/lt.sock"], "sidecar"), (["fake-provider", "--port", "0"], "providers")],
)
def test_a_command_without_its_extra_says_what_to_install(argv: list[str], extra: str) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", MISSING_AIOHTTP, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"pip install 'llmthrottle[{extra}]'" in result.stderr and "Traceback" not in result.stderr


def test_limits_learned_from_headers_keep_later_calls_clear_of_429s(ledger: Any, opened: list[Any]) -> None:
    # 1,200 tokens a minute (20 a second); each call asks for ~200 (input plus max_tokens=190).
    with FakeProvider(tpm=1200, output_tokens=5) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"))  # no limits configured
        opened.append(client)
        started = time.monotonic()
        for _ in range(7):
            client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=190)
        elapsed = time.monotonic() - started
        assert provider.counters.rate_limited == 0, provider.counters  # learned, never discovered by 429s
        assert provider.counters.requests == 7
    # 7 x ~198 tokens against a 1,200 bucket refilling 20/s: the wrapper waited for room itself.
    assert elapsed >= 5.0


def test_responses_and_embeddings_are_priced_and_recorded(ledger: Any, opened: list[Any]) -> None:
    with FakeProvider(output_tokens=6) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard_for(ledger))
        opened.append(client)
        response = client.responses.create(model=MINI, input="hello there", max_output_tokens=50)
        embedded = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert len(embedded.data) == 2
    first, second = records(ledger)
    assert (first.input_tokens, first.output_tokens) == (response.usage.input_tokens, response.usage.output_tokens)
    assert first.cost_micros == lt.cost(MINI, response.usage.model_dump()).total_micros > 0
    assert second.model == "text-embedding-3-small" and second.input_tokens == embedded.usage.prompt_tokens
    assert second.cost_micros == lt.cost("text-embedding-3-small", embedded.usage.model_dump()).total_micros
    assert first.outcome == second.outcome == "ok"


def test_each_call_is_reported_to_the_code_that_made_it(opened: list[Any]) -> None:
    # Without a guard or a ledger: the caller still learns what each call cost, in its own task.
    with FakeProvider(output_tokens=7, insufficient_quota=False) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"))
        opened.append(client)
        with lt.calls() as outer:
            reply = client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20)
            with lt.calls() as inner:
                for _ in client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20, stream=True):
                    pass
        client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=20)  # outside: nobody listens

        async def two_tasks() -> list[list[Any]]:
            aclient = lt.wrap(openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"))

            async def one() -> list[Any]:
                with lt.calls() as made:
                    await aclient.chat.completions.create(model=MINI, messages=HELLO, max_tokens=3)
                return made

            try:
                return list(await asyncio.gather(one(), one()))
            finally:
                await aclient.close()

        per_task = asyncio.run(two_tasks())
    assert len(outer) == 2 and len(inner) == 1 and inner[0] is outer[1]
    first, streamed = outer
    usage = reply.usage.model_dump()
    assert (first.model, first.provider, first.outcome, first.status, first.attempts) == (MINI, "openai", "ok", 200, 1)
    assert (first.input_tokens, first.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert first.cost_micros == lt.cost(MINI, usage).total_micros > 0 and first.priced
    assert first.ttft_s is None and streamed.ttft_s is not None and streamed.output_tokens == 7
    assert [len(made) for made in per_task] == [1, 1] and per_task[0][0] is not per_task[1][0]
    assert all(made[0].output_tokens == 3 for made in per_task)


def test_a_failed_call_is_reported_with_its_status(opened: list[Any]) -> None:
    with FakeProvider(insufficient_quota=True) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"))
        opened.append(client)
        with lt.calls() as made, pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MINI, messages=HELLO)
    [failed] = made
    assert (failed.outcome, failed.status, failed.cost_micros, failed.attempts) == ("error", 429, 0, 1)


def test_a_token_limit_is_charged_as_each_provider_counts_it(opened: list[Any]) -> None:
    # OpenAI counts the requested max tokens toward TPM, used or not; Anthropic the tokens used.
    # A limit mirroring the provider's must keep the same count, or it admits what gets a 429.
    with FakeProvider(output_tokens=5) as provider:
        for family, sdk, base_url, model in (
            ("openai", openai.OpenAI, provider.openai_base_url, MINI),
            ("anthropic", anthropic.Anthropic, provider.anthropic_base_url, SONNET),
        ):
            limiter = lt.Limiter({"tokens": "100k/day"})  # leaks about one token a second
            client = lt.wrap(sdk(base_url=base_url, api_key="k"), limiter=limiter, keys=["team:a"])
            opened.append(client)
            if family == "openai":
                reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=200)
                counted = reply.usage.prompt_tokens + 200
            else:
                message = client.messages.create(model=model, messages=HELLO, max_tokens=200)
                counted = message.usage.input_tokens + message.usage.output_tokens
            [state] = limiter.status("team:a")
            assert state.used == pytest.approx(counted, abs=1), family


def test_a_request_over_max_request_tokens_is_refused_before_it_is_sent(ledger: Any, opened: list[Any]) -> None:
    long = [{"role": "user", "content": "word " * 400}]
    with FakeProvider() as provider:
        client = lt.wrap(
            openai.OpenAI(base_url=provider.openai_base_url, api_key="k"),
            guard=guard_for(ledger),
            max_request_tokens=200,
        )
        opened.append(client)
        with pytest.raises(lt.RequestTooLarge, match="max_request_tokens=200") as refused:
            client.chat.completions.create(model=MINI, messages=long, max_tokens=10)
        assert refused.value.requested > 400 and refused.value.limit == 200
        assert isinstance(refused.value, ValueError) and isinstance(refused.value, lt.LlmthrottleError)
        client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=10)  # a small one goes
        assert provider.counters.requests == 1
    assert [r.outcome for r in records(ledger)] == ["ok"]  # the refused one never reached the provider
    with pytest.raises(lt.ConfigError, match="max_request_tokens"):
        lt.wrap(openai.OpenAI(base_url="http://127.0.0.1:9", api_key="k"), max_request_tokens=0)


def test_trim_to_fit_drops_the_oldest_turns_until_the_request_fits(opened: list[Any]) -> None:
    turns = [{"role": "system", "content": "be brief"}]
    for n in range(6):
        turns += [{"role": "user", "content": f"question {n} " * 60}, {"role": "assistant", "content": "answer " * 60}]
    turns.append({"role": "user", "content": "and the last one?"})
    with FakeProvider() as provider:
        client = lt.wrap(
            openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), max_request_tokens=400, trim_to_fit=True
        )
        opened.append(client)
        reply = client.chat.completions.create(model=MINI, messages=turns, max_tokens=20)
        assert reply.usage is not None and reply.usage.prompt_tokens + 20 <= 400
        assert lt.estimate({"model": MINI, "messages": turns, "max_tokens": 20}).total > 400  # it had to trim
        claude = lt.wrap(
            anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="k"),
            max_request_tokens=400,
            trim_to_fit=True,
        )
        opened.append(claude)
        message = claude.messages.create(
            model="claude-3-5-haiku-latest", max_tokens=20, system="be brief", messages=turns[1:]
        )
        assert message.usage.input_tokens + 20 <= 400


def test_trimming_keeps_system_messages_the_last_turn_and_anthropics_user_first_order() -> None:
    from llmthrottle.providers.size import RequestTooLarge, fit_request

    filler = "lorem ipsum " * 50
    openai_turns = [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": filler},
        {"role": "developer", "content": "more rules"},
        {"role": "assistant", "content": filler},
        {"role": "user", "content": "last"},
    ]
    body = {"model": MINI, "messages": openai_turns, "max_tokens": 5}
    fitted = fit_request(body, "openai", "chat", 60, trim=True)
    assert [m["role"] for m in fitted["messages"]] == ["system", "developer", "user"]
    assert fitted["messages"][-1]["content"] == "last" and body["messages"] == openai_turns  # not mutated
    assert fit_request(body, "openai", "chat", 10_000, trim=True) is body
    claude_turns = [
        {"role": "user", "content": filler},
        {"role": "assistant", "content": "short"},
        {"role": "user", "content": "next"},
        {"role": "assistant", "content": filler},
        {"role": "user", "content": "last"},
    ]
    claude = {"model": "claude-3-5-haiku-latest", "max_tokens": 5, "messages": claude_turns}
    fitted = fit_request(claude, "anthropic", "messages", 120, trim=True)
    assert fitted["messages"][0]["role"] == "user" and fitted["messages"][-1]["content"] == "last"
    with pytest.raises(RequestTooLarge, match="even with its oldest turns dropped"):
        fit_request({"model": MINI, "messages": [{"role": "user", "content": filler}]}, "openai", "chat", 20, trim=True)
    with pytest.raises(RequestTooLarge, match="trim_to_fit=True"):
        fit_request({"model": "text-embedding-3-small", "input": filler}, "openai", "embeddings", 20, trim=False)


def test_the_response_cache_answers_an_identical_request_without_the_provider(ledger: Any, opened: list[Any]) -> None:
    cache = lt.ResponseCache(ttl_s=60)
    with FakeProvider() as provider:

        def client_for(key: str) -> Any:
            client = lt.wrap(
                openai.OpenAI(base_url=provider.openai_base_url, api_key=key), guard=guard_for(ledger), cache=cache
            )
            opened.append(client)
            return client

        client = client_for("k")
        first = client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=10)
        with lt.calls() as made:
            again = client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=10)
        assert again.id == first.id and again.choices[0].message.content == first.choices[0].message.content
        assert provider.counters.requests == 1 and (cache.hits, len(cache)) == (1, 1)
        assert [(c.outcome, c.cost_micros) for c in made] == [("cache_hit", 0)]
        # A different body, another API key or a stream is a miss that reaches the provider.
        client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=11)
        client_for("other-key").chat.completions.create(model=MINI, messages=HELLO, max_tokens=10)
        list(client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=10, stream=True))
        assert provider.counters.requests == 4

        async def async_hit() -> str:
            wrapped = lt.wrap(openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"), cache=cache)
            try:
                return (await wrapped.chat.completions.create(model=MINI, messages=HELLO, max_tokens=10)).id
            finally:
                await wrapped.close()

        assert asyncio.run(async_hit()) == first.id and provider.counters.requests == 4
    outcomes = [(r.outcome, r.cost_micros) for r in records(ledger)]
    assert outcomes[1] == ("cache_hit", 0) and outcomes.count(("cache_hit", 0)) == 1
    assert outcomes[0][0] == "ok" and outcomes[0][1] > 0


def test_two_servers_on_one_host_are_two_providers(opened: list[Any]) -> None:
    """Limits, pauses and cached replies are kept per server: another port or another base path
    on the same host (two local model servers, a proxy's routes) is another provider. Azure's
    are kept per deployment, whichever of its paths a request takes."""
    from llmthrottle.providers.pause import limit_scope
    from llmthrottle.providers.protocol import endpoint_of

    cache = lt.ResponseCache()
    with FakeProvider(output_tokens=3) as one, FakeProvider(output_tokens=9) as two:
        clients = [lt.wrap(openai.OpenAI(base_url=p.openai_base_url, api_key="k"), cache=cache) for p in (one, two)]
        opened.extend(clients)
        made = [c.chat.completions.create(model=MINI, messages=HELLO).usage.completion_tokens for c in clients]
        assert made == [3, 9] and two.counters.requests == 1

    def key(host: str, port: int | None, path: str) -> str:
        endpoint = endpoint_of("POST", path, host)
        assert endpoint is not None
        return limit_scope(endpoint, host, port, path, {"authorization": "Bearer k"}, "m", "")[0]

    chat, responses = "/v1/chat/completions", "/v1/responses"
    assert key("h", None, chat) == key("h", None, responses) != key("h", 8000, chat) != key("h", 8001, chat)
    assert key("h", None, "/groq/v1/chat/completions") != key("h", None, chat)
    azure = "x.openai.azure.com"
    assert key(azure, None, "/openai/v1/chat/completions") == key(azure, None, "/openai/responses")


def test_the_response_cache_keeps_only_successes_within_its_bounds() -> None:
    from llmthrottle.providers.cache import CachedReply

    cache = lt.ResponseCache(ttl_s=60, max_entries=2, max_bytes=10)
    for name in ("a", "b", "c"):
        cache.put(name, CachedReply(200, "application/json", b"12345"))
    assert cache.get("a") is None and cache.get("c") is not None  # bytes bound: 10, two of five
    cache.put("big", CachedReply(200, "application/json", b"x" * 11))
    assert cache.get("big") is None  # larger than the whole cache
    short = lt.ResponseCache(ttl_s=0.05)
    short.put("k", CachedReply(200, "application/json", b"{}"))
    time.sleep(0.1)
    assert short.get("k") is None and len(short) == 0  # expired entries go
    key = lt.ResponseCache.key("scope", "chat", {"b": 1, "a": [1, 2]})
    assert key == lt.ResponseCache.key("scope", "chat", {"a": [1, 2], "b": 1})  # key order does not matter
    assert key != lt.ResponseCache.key("other", "chat", {"a": [1, 2], "b": 1})
    for bad in ({"ttl_s": 0}, {"max_entries": 0}, {"max_bytes": -1}, {"ttl_s": float("nan")}):
        with pytest.raises(lt.ConfigError):
            lt.ResponseCache(**bad)


def test_error_replies_are_not_cached(opened: list[Any]) -> None:
    cache = lt.ResponseCache()
    with FakeProvider(insufficient_quota=True) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), cache=cache)
        opened.append(client)
        for _ in range(2):
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=10)
        assert provider.counters.requests == 2 and len(cache) == 0


_JSON_KEYS = st.sampled_from(["usage", "model", "id", "content", "input", "metadata", 'he said "usage":', "}"])
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.sampled_from(['"usage":{', "}]{["]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_JSON_KEYS, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    members=st.dictionaries(_JSON_KEYS, _JSON_VALUES, max_size=5),
    usage=st.one_of(st.none(), st.dictionaries(st.sampled_from(["input_tokens", "output_tokens"]), st.integers(0, 9))),
    position=st.integers(0, 5),
    spaced=st.booleans(),
)
def test_a_replys_usage_read_without_parsing_it_whole_is_its_root_usage(
    members: dict[str, Any], usage: dict[str, int] | None, position: int, spaced: bool
) -> None:
    """The shortcut that reads `usage` off the end of a reply either declines (the reply is
    then parsed whole) or gives exactly the root object's `usage`, wherever else the word
    appears: in strings, in nested objects, as a value."""
    from llmthrottle.providers.protocol import _root_usage

    items = [(k, v) for k, v in members.items() if k != "usage"]
    if usage is not None:
        items.insert(min(position, len(items)), ("usage", usage))
    body = json.dumps(dict(items), separators=(", ", " : ") if spaced else (",", ":")).encode()
    found = _root_usage(body)
    assert found is None or found == json.loads(body)["usage"]
    if usage is not None and items[-1][0] == "usage":
        assert found == usage  # the providers' own order: usage last, read without a parse


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_a_stream_is_read_event_by_event_whatever_its_line_endings(newline: bytes) -> None:
    """Server-sent events end with a blank line, whichever line ending the server (or a proxy
    before it) writes: each event passes on as it arrives, and the usage is read."""
    from llmthrottle.providers.protocol import Endpoint, UsageReader

    events = [
        b'data: {"choices":[{"delta":{"content":"hi"}}]}',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
        b"data: [DONE]",
    ]
    stream = b"".join(event + newline + newline for event in events)
    reader = UsageReader(Endpoint("openai", "chat"))
    passed = [reader.feed(stream[at : at + 7]) for at in range(0, len(stream), 7)]
    assert b"".join(passed) + reader.finish() == stream
    assert any(passed[: len(passed) // 2])  # the first event went on long before the stream ended
    assert reader.usage == {"prompt_tokens": 3, "completion_tokens": 1} and reader.complete


_LINE_ENDS = [b"\n", b"\r\n", b"\r"]


@st.composite
def _event_streams(draw: Any) -> tuple[list[bytes], bytes, list[int]]:
    """Events of `data:` lines with any line end after any line, as a stream that mixes them
    may (a CR is never followed by a line end that starts with LF: the two would be one CRLF):
    each event's data, the stream, and where each event's blank line ends in it."""
    payload = st.text(alphabet='ab{}:"[] ,', min_size=1, max_size=12).map(lambda text: f"<{text}>".encode())
    events, stream, ends, previous = [], b"", [], b""
    for lines in draw(st.lists(st.lists(payload, min_size=1, max_size=3), min_size=1, max_size=5)):
        for line in [*(b"data: " + data for data in lines), b""]:
            allowed = [end for end in _LINE_ENDS if not (previous == b"\r" and end.startswith(b"\n"))]
            previous = draw(st.sampled_from(allowed))
            stream += line + previous
        events.append(b"".join(lines))
        ends.append(len(stream))
    return events, stream, ends


@settings(max_examples=300, deadline=None)
@given(_event_streams(), st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=40))
def test_a_stream_is_split_into_its_events_whatever_its_line_ends_and_pieces(
    written: tuple[list[bytes], bytes, list[int]], sizes: list[int]
) -> None:
    """Each event comes out whole, in order, by the piece that ends it, whatever line ends the
    server (or proxies before it) mixed and however the bytes were split; nothing is lost or
    repeated."""
    from llmthrottle.providers.protocol import EventSplitter, event_data

    events, stream, ends = written
    splitter, out, at, index = EventSplitter(), [], 0, 0
    while at < len(stream):
        size = sizes[index % len(sizes)]
        out += splitter.feed(stream[at : at + size])
        at, index = at + size, index + 1
        assert len([e for e in out if event_data(e)]) >= sum(1 for end in ends if end <= at)
    rest = splitter.rest()
    assert b"".join(out) + rest == stream
    assert [event_data(e) for e in out if event_data(e)] == events and not rest.strip()


def test_a_call_interrupted_on_its_way_is_charged_and_recorded_at_its_worst_case(ledger: Any) -> None:
    """A timeout around the call cancels it while the provider is answering: the provider may
    bill it and its usage will never be known, so it is charged to the limits and recorded at
    the reservation's worst case (`unfinished`), never refunded at $0. A call cancelled before
    it left is refunded."""
    limiter = lt.Limiter({"tokens": "100k/min"}, budgets=[lt.Budget("team:*", 10, "day")])

    async def scenario(provider: FakeProvider) -> None:
        client = lt.wrap(
            openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"),
            guard=lt.Guard(limiter, ledger=ledger),
            keys=["team:a"],
        )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.chat.completions.create(model=MINI, messages=HELLO, max_tokens=50), 0.5)
        await client.close()

    with FakeProvider(ttft_s=3.0) as provider:
        asyncio.run(scenario(provider))
        assert provider.counters.requests == 1
    [record] = records(ledger)
    counted = lt.estimate({"model": MINI, "messages": HELLO, "max_tokens": 50})
    worst = lt.worst_case_cost(MINI, counted.input_tokens, counted.max_output_tokens)
    assert (record.outcome, record.cost_micros, record.tags["error"]) == ("unfinished", worst, "CancelledError")
    [budget] = [s for s in limiter.status("team:a") if s.dimension == "budget_usd"]
    assert round(budget.used * 1_000_000) == worst  # charged to the budget, not refunded
