"""Anthropic's rate limits as the wrapper learns and keeps them, with the real `anthropic` SDK
against the fake provider: its `tokens` headers restate the input and output limits, and its
input limit leaves prompt-cache reads out."""

from __future__ import annotations

from typing import Any

import pytest
from provider_helpers import records

import llmthrottle as lt
from llmthrottle.testing import FakeProvider

anthropic = pytest.importorskip("anthropic")

SONNET = "claude-sonnet-4-5"


def test_the_tokens_headers_restate_the_tightest_token_limit_and_hold_nothing_back(opened: list[Any]) -> None:
    """After a call that used most of the output limit, `anthropic-ratelimit-tokens-*` announce
    that limit. Taken as a limit of its own and charged with the input, it would refuse a
    2,000-token prompt against a 500-token limit; the wrapper keeps only the input and output
    limits it restates."""
    with FakeProvider(itpm=100_000, otpm=500, output_tokens=100) as provider:
        client = lt.wrap(anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="k"), deadline_s=5)
        opened.append(client)
        prompt = [{"role": "user", "content": "word " * 2000}]
        for _ in range(3):
            raw = client.messages.with_raw_response.create(model=SONNET, messages=prompt, max_tokens=100)
            assert raw.parse().usage.input_tokens > 2000
        assert raw.headers["anthropic-ratelimit-tokens-limit"] == "500"
        assert raw.headers["anthropic-ratelimit-output-tokens-limit"] == "500"
        assert provider.counters.rate_limited == 0


def _cached_system() -> list[dict[str, Any]]:
    return [{"type": "text", "text": "policy " * 3000, "cache_control": {"type": "ephemeral"}}]


@pytest.mark.parametrize("limits", ["learned", "known"])
def test_prompt_cache_reads_do_not_count_toward_the_input_limit(limits: str, opened: list[Any]) -> None:
    """A 3,000-token system prompt, cached: the provider counts it toward its 10,000 input
    tokens a minute once, when written, and never when read. Counted on every call, eight calls
    (three of them streamed) would need two minutes; with the reads given back they all go at
    once (the deadline of 5 s would refuse a wait)."""
    with FakeProvider(itpm=10_000, output_tokens=8) as provider:
        sdk = anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="k")
        if limits == "known":
            client = lt.wrap(sdk, limiter=lt.Limiter({"input_tokens": "10000/min"}), deadline_s=5)
        else:
            client = lt.wrap(sdk, deadline_s=5)
        opened.append(client)
        usages = [
            client.messages.create(
                model=SONNET,
                system=_cached_system(),
                messages=[{"role": "user", "content": f"question {turn}"}],
                max_tokens=8,
            ).usage
            for turn in range(5)
        ]
        for turn in range(3):
            with client.messages.stream(
                model=SONNET,
                system=_cached_system(),
                messages=[{"role": "user", "content": f"more {turn}"}],
                max_tokens=8,
            ) as stream:
                streamed = stream.get_final_message().usage
            assert streamed.cache_read_input_tokens == usages[0].cache_creation_input_tokens
        assert usages[0].cache_creation_input_tokens > 2900 and usages[0].cache_read_input_tokens == 0
        assert all(u.cache_read_input_tokens == usages[0].cache_creation_input_tokens for u in usages[1:])
        assert all(u.cache_creation_input_tokens == 0 and 0 < u.input_tokens < 20 for u in usages[1:])
        assert provider.counters.rate_limited == 0
        assert provider.counters.charged["input"] < 3200


def test_a_stream_abandoned_after_a_cache_read_is_settled_with_it(ledger: Any, opened: list[Any]) -> None:
    """A stream left after its first events still told, in `message_start`, what it read from
    the prompt cache and what it wrote: the record keeps both beside the output received."""
    with FakeProvider(output_tokens=200) as provider:
        client = lt.wrap(
            anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="k"),
            guard=lt.Guard(lt.Limiter({"requests": "1000/s"}), ledger=ledger),
        )
        opened.append(client)
        system = _cached_system()
        for turn in range(2):
            stream = client.messages.create(
                model=SONNET,
                system=system,
                messages=[{"role": "user", "content": f"question {turn}"}],
                max_tokens=500,
                stream=True,
            )
            for n, _ in enumerate(stream):
                if n == 5:
                    break
            stream.close()
    written, read = records(ledger)
    assert written.outcome == read.outcome == "cancelled"
    assert written.cache_write_tokens > 2900 and written.cached_input_tokens == 0
    assert read.cached_input_tokens == written.cache_write_tokens and read.cache_write_tokens == 0
    assert 0 < read.output_tokens < 200 and 0 < read.input_tokens < 20


def test_a_moving_summary_sets_no_limits_again() -> None:
    """Anthropic's `tokens` headers follow whichever limit is tightest; when only they move, the
    announcement is new but the limits kept are not, and the limiter keeping them is left as
    it is."""
    from llmthrottle.providers.learned import LearnedLimits

    def announced(tokens_limit: int) -> list[tuple[str, int, int, float | None, float]]:
        return [
            ("requests", 50, 49, 1.0, 60.0),
            ("tokens", tokens_limit, tokens_limit - 10, 1.0, 60.0),
            ("input_tokens", 40_000, 39_990, 1.0, 60.0),
            ("output_tokens", 8_000, 7_990, 1.0, 60.0),
        ]

    learned = LearnedLimits()
    learned.observe("k", announced(40_000))
    first = learned.of("k")
    assert first is not None and first.dimensions == {"requests", "input_tokens", "output_tokens"}
    set_again: list[Any] = []
    first.limiter.set_limits = set_again.append  # type: ignore[method-assign, assignment]
    learned.observe("k", announced(8_000))
    assert set_again == []
    moved = learned.of("k")
    assert moved is not None and moved.limiter is first.limiter and moved.rates == first.rates
    assert ("tokens", 8_000, 60.0) in moved.limits  # what the next reply is compared with
