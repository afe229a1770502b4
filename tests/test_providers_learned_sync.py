"""Learned limits kept in step with the provider: the workers that learn them together count the
provider's usage once, calls give back whole what they did not use, a refused attempt is given
back before the provider's count is taken, and calls sent before the limits were known are
counted by the replies they bring."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import pytest

import llmthrottle as lt
from llmthrottle.providers.learned import LearnedLimits

openai = pytest.importorskip("openai")


def _tokens_used(learned: LearnedLimits, key: str, dimension: str) -> int:
    found = learned.of(key)
    assert found is not None
    return next(int(s.used) for s in found.limiter.status(key) if s.dimension == dimension)


def test_workers_learning_the_same_limits_count_the_provider_usage_once(request: Any) -> None:
    """Two workers on one state read the same reply: 20,000 of 60,000 tokens used. Each charging
    it on its own would count 40,000."""
    name = f"learned-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: lt.SharedState.remove(name))
    announced = [("requests", 500, 499, 0.12, 60.0), ("tokens", 60_000, 40_000, 20.0, 60.0)]
    workers = [LearnedLimits(lt.SharedState(name)) for _ in range(2)]
    for learned in workers:
        learned.observe("openai|k|gpt-4o", announced)
    for learned in workers:
        assert _tokens_used(learned, "openai|k|gpt-4o", "tokens") == pytest.approx(20_000, abs=50)
        assert _tokens_used(learned, "openai|k|gpt-4o", "requests") == 1


def test_calls_in_flight_together_give_back_whole_what_they_did_not_use() -> None:
    """Eight calls reserve 100 output tokens each against 1,200 a minute (20 a second) and use 2
    in the 0.5 s they take. Given back as if each had been alone, each would keep the 10 units
    that would have drained meanwhile (about 70 used in all); given back whole, 16 are used,
    less what drained."""
    learned = LearnedLimits()
    key = "anthropic|k|claude-sonnet-4-5"
    learned.observe(key, [("output_tokens", 1_200, 1_200, None, 60.0)])
    known = learned.of(key)
    assert known is not None
    calls = [known.try_acquire(key, "anthropic", 0, 100) for _ in range(8)]
    assert all(calls)
    time.sleep(0.5)
    for call in calls:
        call.commit(output_tokens=2)
    assert _tokens_used(learned, key, "output_tokens") <= 16


def _learned_of(client: Any) -> tuple[LearnedLimits, str]:
    learned = client._client._transport.settings.learned
    (key,) = learned._learned
    return learned, key


def test_a_refused_attempt_is_given_back_before_the_provider_count_is_taken(opened: list[Any]) -> None:
    """Another client on the key uses up the provider's 3,000 tokens; the wrapped call, reserved
    in the learned limits, is refused with nothing remaining. Its reservation goes back first and
    the learned limits are then left with nothing, as the provider: given back after, it would
    leave 1,000 tokens the provider does not have."""
    from llmthrottle.testing import FakeProvider

    with FakeProvider(tpm=3_000, output_tokens=5) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), deadline_s=0.5)
        bare = openai.OpenAI(base_url=provider.openai_base_url, api_key="k", max_retries=0)
        opened += [client, bare]
        messages = [{"role": "user", "content": "hi"}]
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=5)
        learned, key = _learned_of(client)
        left = provider._buckets["tokens"].remaining()
        bare.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=left - 20)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=1_000)
        assert _tokens_used(learned, key, "tokens") >= 2_950


def test_calls_sent_before_the_limits_were_known_are_counted_by_their_replies(opened: list[Any]) -> None:
    """A second call leaves while the first is answered slowly: the first reply teaches the
    limits, with the provider's count from before the second call arrived. The second reply's
    count includes it, and the learned limits take it."""
    from llmthrottle.testing import FakeProvider

    with FakeProvider(tpm=10_000, output_tokens=5, ttft_s=0.6) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"))
        opened.append(client)
        messages = [{"role": "user", "content": "hi"}]

        def call() -> None:
            client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=2_000, stream=True)

        first = threading.Thread(target=call)
        first.start()
        time.sleep(0.3)  # the first is admitted and waiting out its time to first token
        call()
        first.join()
        learned, key = _learned_of(client)
        assert _tokens_used(learned, key, "tokens") >= 3_500  # two calls of 2,000, less what drained


def _arrived_after(provider: Any, seconds: float) -> int:
    time.sleep(seconds)
    with provider._lock:
        return int(provider.counters.requests)


def _calls_started(client: Any, count: int) -> list[threading.Thread]:
    """`count` threads, started, each making one chat call of 5 tokens."""
    messages = [{"role": "user", "content": "hi"}]
    threads = [
        threading.Thread(target=lambda: client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=5))
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def test_calls_to_a_key_nothing_is_known_of_wait_for_the_first_reply(opened: list[Any]) -> None:
    """Eight calls start together against limits nobody has learned yet: one goes, its reply
    teaches the limits, and the others leave after it (sent blind, they would have been counted
    only by the replies they brought back). All eight then succeed."""
    from llmthrottle.testing import FakeProvider

    with FakeProvider(tpm=100_000, output_tokens=5, per_token_s=0.1) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"))
        opened.append(client)
        threads = _calls_started(client, 8)
        assert _arrived_after(provider, 0.25) <= 1  # the first answers after 0.5 s
        for thread in threads:
            thread.join()
        assert provider.counters.requests == 8 and provider.counters.rate_limited == 0
        learned, key = _learned_of(client)
        assert learned.limits_of(key)


def test_asyncio_calls_wait_for_the_first_reply_too(opened: list[Any]) -> None:
    import asyncio

    from llmthrottle.testing import FakeProvider

    with FakeProvider(tpm=100_000, output_tokens=5, per_token_s=0.1) as provider:
        client = lt.wrap(openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"))
        messages = [{"role": "user", "content": "hi"}]

        async def run() -> int:
            calls = [
                asyncio.ensure_future(client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=5))
                for _ in range(8)
            ]
            await asyncio.sleep(0.25)
            with provider._lock:
                early = int(provider.counters.requests)
            await asyncio.gather(*calls)
            await client.close()
            return early

        assert asyncio.run(run()) <= 1
        assert provider.counters.requests == 8


def test_a_provider_that_announces_no_limits_is_not_waited_for_again(opened: list[Any]) -> None:
    """After a first reply with no limits in its headers, calls to that key go at once."""
    from llmthrottle.testing import FakeProvider

    with FakeProvider(output_tokens=5, per_token_s=0.1) as provider:
        client = lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"))
        opened.append(client)
        messages = [{"role": "user", "content": "hi"}]
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=5)
        threads = _calls_started(client, 4)
        assert _arrived_after(provider, 0.4) == 5  # each takes 0.5 s
        for thread in threads:
            thread.join()


def test_a_first_reply_that_is_an_error_leaves_the_next_call_to_learn_from() -> None:
    """A first call answered by a server error, with no limits in its headers, teaches nothing:
    the next call goes first instead, and only a reply that succeeds without limits marks the
    provider key as announcing none."""
    from llmthrottle.providers.learned import TEACH

    learned = LearnedLimits()
    key = "openai|k|gpt-4o"
    assert learned.first_reply(key) is TEACH
    waiting = learned.first_reply(key)
    assert isinstance(waiting, threading.Event) and not waiting.is_set()
    learned.taught(key, answered=False)
    assert waiting.is_set()
    assert learned.first_reply(key) is TEACH
    learned.taught(key, answered=True)
    assert learned.first_reply(key) is None
