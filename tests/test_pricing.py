"""Pricing: each provider's usage shape priced against hand-worked examples.

Prices used below (per 1M tokens, from the shipped table):
gpt-4o 2.50 in / 1.25 cached / 10 out; o4-mini 1.10 / 0.275 / 4.40; gpt-5 1.25 / 0.125 / 10;
gpt-4o-mini 0.15 / 0.075 / 0.60; claude-sonnet-4-5 3 in / 3.75 5m write / 6 1h write / 0.30 read /
15 out, over 200k prompt tokens 6 / 7.5 / 12 / 0.6 / 22.5; gemini-2.5-pro 1.25 / 0.125 / 10, over
200k 2.50 / 0.25 / 15.
"""

from __future__ import annotations

import math
import types
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmthrottle._native import ConfigError
from llmthrottle.pricing import (
    PriceTable,
    TokenUsage,
    UsageAccumulator,
    cost,
    normalize_usage,
    worst_case_cost,
)
from llmthrottle.pricing.usage import limited_input_tokens, limited_tokens

# ------------------------------------------------------------------ provider shapes


def test_openai_chat_cached_tokens_are_inside_prompt_tokens_and_reasoning_inside_output() -> None:
    usage = {
        "prompt_tokens": 10_000,
        "completion_tokens": 2_000,
        "prompt_tokens_details": {"cached_tokens": 4_000, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 500},
    }
    c = cost("gpt-4o", usage)
    # 6,000 uncached * 2.50 + 4,000 cached * 1.25 + 2,000 output * 10 = 15,000 + 5,000 + 20,000
    assert c.total_micros == 40_000
    assert c.breakdown_micros == {"input": 15_000, "cached_input": 5_000, "cache_write": 0, "output": 20_000}
    assert c.usage == TokenUsage(
        input_tokens=6_000, cached_input_tokens=4_000, output_tokens=2_000, reasoning_tokens=500
    )
    assert c.total_usd == pytest.approx(0.04)
    assert c.provider == "openai"


def test_openai_chat_fractional_micros_round_up_once_per_call() -> None:
    usage = {
        "prompt_tokens": 1_234,
        "completion_tokens": 3_000,
        "prompt_tokens_details": {"cached_tokens": 1_024},
        "completion_tokens_details": {"reasoning_tokens": 2_500},
    }
    c = cost("o4-mini-2025-04-16", usage)
    # 210 * 1.10 = 231; 1,024 * 0.275 = 281.6; 3,000 * 4.40 = 13,200 -> 13,712.6 -> 13,713
    assert c.breakdown_micros["cached_input"] == Decimal("281.6")
    assert c.total_micros == 13_713
    assert c.resolved_model == "o4-mini"


def test_openai_responses_api_usage() -> None:
    usage = {
        "input_tokens": 50_000,
        "output_tokens": 1_000,
        "total_tokens": 51_000,
        "input_tokens_details": {"cached_tokens": 40_000},
        "output_tokens_details": {"reasoning_tokens": 800},
    }
    # 10,000 * 1.25 + 40,000 * 0.125 + 1,000 * 10 = 12,500 + 5,000 + 10,000
    assert cost("gpt-5", usage).total_micros == 27_500


def test_anthropic_input_tokens_exclude_cache_reads_and_writes_split_by_ttl() -> None:
    usage = {
        "input_tokens": 100,
        "output_tokens": 500,
        "cache_creation_input_tokens": 3_000,
        "cache_read_input_tokens": 20_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1_000, "ephemeral_1h_input_tokens": 2_000},
    }
    c = cost("claude-sonnet-4-5-20250929", usage)
    # 100 * 3 + 1,000 * 3.75 + 2,000 * 6 + 20,000 * 0.30 + 500 * 15
    assert c.breakdown_micros == {"input": 300, "cache_write": 15_750, "cached_input": 6_000, "output": 7_500}
    assert c.total_micros == 29_550
    assert c.tier_above_prompt_tokens is None


def test_anthropic_cache_creation_total_without_ttl_split_is_billed_at_5m_rate() -> None:
    usage = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 1_000}
    assert cost("claude-haiku-4-5", usage).total_micros == 1_250  # 1,000 * 1.25


def test_anthropic_long_context_tier_reprices_the_whole_request() -> None:
    usage = {"input_tokens": 150_000, "cache_read_input_tokens": 60_000, "output_tokens": 1_000}
    c = cost("claude-sonnet-4-5", usage)
    # prompt 210k > 200k: 150,000 * 6 + 60,000 * 0.60 + 1,000 * 22.50
    assert c.total_micros == 958_500
    assert c.tier_above_prompt_tokens == 200_000


def test_tier_threshold_is_strictly_above() -> None:
    usage = {"input_tokens": 200_000, "output_tokens": 0}
    assert cost("claude-sonnet-4", usage, provider="anthropic").total_micros == 600_000


def test_gemini_long_context_tier_and_thoughts_billed_as_output() -> None:
    usage = {
        "promptTokenCount": 250_000,
        "cachedContentTokenCount": 100_000,
        "candidatesTokenCount": 2_000,
        "thoughtsTokenCount": 1_000,
        "totalTokenCount": 253_000,
    }
    c = cost("models/gemini-2.5-pro", usage)
    # 150,000 * 2.50 + 100,000 * 0.25 + 3,000 * 15
    assert c.total_micros == 445_000
    assert c.usage.reasoning_tokens == 1_000


def test_gemini_short_context_snake_case_sdk_fields() -> None:
    usage = {"prompt_token_count": 1_000, "candidates_token_count": 100, "thoughts_token_count": 50}
    assert cost("gemini-2.5-pro", usage).total_micros == 2_750  # 1,000*1.25 + 150*10


def test_mistral_uses_openai_chat_shape() -> None:
    usage = {"prompt_tokens": 1_000, "completion_tokens": 1_000, "total_tokens": 2_000}
    assert cost("mistral-large-latest", usage).total_micros == 8_000  # 1,000*2 + 1,000*6


def test_sdk_objects_with_model_dump_or_plain_attributes() -> None:
    class Pydanticish:
        def model_dump(self) -> dict[str, object]:
            return {
                "prompt_tokens": 1_000,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            }

    assert cost("gpt-4o", Pydanticish()).total_micros == 2_500
    attrs = types.SimpleNamespace(
        input_tokens=10,
        output_tokens=0,
        cache_read_input_tokens=1_000,
        cache_creation_input_tokens=None,
        cache_creation=None,
    )
    assert cost("claude-3-5-haiku", attrs).total_micros == 88  # 10*0.80 + 1,000*0.08


# ------------------------------------------------------------------ rounding


@pytest.mark.parametrize(
    ("model", "usage", "micros"),
    [
        ("gpt-4o-mini", {"prompt_tokens": 1, "completion_tokens": 0}, 1),  # 0.15 -> 1
        ("gpt-4o-mini", {"prompt_tokens": 1, "completion_tokens": 1}, 1),  # 0.75 -> 1, not 2
        ("gpt-4o-mini", {"prompt_tokens": 0, "completion_tokens": 0}, 0),
        ("gpt-5-nano", {"prompt_tokens": 20, "completion_tokens": 0}, 1),  # exactly 1.0
        ("gpt-5-nano", {"prompt_tokens": 21, "completion_tokens": 0}, 2),  # 1.05 -> 2
    ],
)
def test_total_rounds_up_to_the_next_micro_dollar(model: str, usage: dict[str, int], micros: int) -> None:
    assert cost(model, usage).total_micros == micros


# ------------------------------------------------------------------ streaming


def test_anthropic_stream_folds_message_start_and_cumulative_message_delta() -> None:
    acc = UsageAccumulator()
    events = [
        {
            "type": "message_start",
            "message": {
                "model": "claude-sonnet-4-5",
                "usage": {
                    "input_tokens": 100,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 20_000,
                    "output_tokens": 1,
                },
            },
        },
        {"type": "content_block_start", "index": 0},
        {"type": "content_block_delta", "index": 0, "delta": {"text": "hi"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 250}},
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 500}},
        {"type": "message_stop"},
    ]
    for event in events:
        acc.add(event)
    assert acc.model == "claude-sonnet-4-5"
    assert acc.usage == TokenUsage(input_tokens=100, cached_input_tokens=20_000, output_tokens=500)
    # 100*3 + 20,000*0.30 + 500*15
    assert cost(acc.model, acc.usage).total_micros == 13_800


def test_openai_stream_usage_on_final_chunk_only() -> None:
    acc = UsageAccumulator()
    for text in ("Hel", "lo"):
        acc.add({"model": "gpt-4o-2024-08-06", "choices": [{"delta": {"content": text}}], "usage": None})
    acc.add(
        {
            "model": "gpt-4o-2024-08-06",
            "choices": [],
            "usage": {"prompt_tokens": 1_000, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}},
        }
    )
    assert acc.events_with_usage == 1
    assert cost(acc.model or "", acc.usage).total_micros == 2_520  # 1,000*2.5 + 2*10


def test_responses_stream_completed_event_and_gemini_cumulative_chunks() -> None:
    acc = UsageAccumulator()
    acc.add({"type": "response.output_text.delta", "delta": "x"})
    acc.add(
        {
            "type": "response.completed",
            "response": {
                "model": "gpt-5",
                "usage": {"input_tokens": 100, "output_tokens": 10, "input_tokens_details": {"cached_tokens": 0}},
            },
        }
    )
    assert acc.usage == TokenUsage(input_tokens=100, output_tokens=10)

    gemini = UsageAccumulator()
    for candidates in (5, 12, 20):
        gemini.add(
            {
                "candidates": [],
                "modelVersion": "gemini-2.5-flash",
                "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": candidates},
            }
        )
    assert gemini.usage.output_tokens == 20
    assert gemini.model == "gemini-2.5-flash"


def test_accumulator_without_usage_says_how_to_get_it() -> None:
    acc = UsageAccumulator()
    acc.add({"choices": [{"delta": {"content": "x"}}], "usage": None})
    with pytest.raises(ValueError, match="include_usage"):
        _ = acc.usage


# ------------------------------------------------------------------ malformed usage


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"prompt_tokens": -1, "completion_tokens": 0}, "prompt_tokens"),
        ({"prompt_tokens": math.nan, "completion_tokens": 0}, "prompt_tokens"),
        ({"prompt_tokens": 10, "completion_tokens": True}, "completion_tokens"),
        ({"prompt_tokens": 10**13, "completion_tokens": 0}, "prompt_tokens"),
        ({"prompt_tokens": "12", "completion_tokens": 0}, "prompt_tokens"),
        ({"prompt_tokens": 1.5, "completion_tokens": 0}, "prompt_tokens"),
        (
            {"prompt_tokens": 10, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 11}},
            "cached_tokens",
        ),
        (
            {"prompt_tokens": 10, "completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 2}},
            "reasoning_tokens",
        ),
        ({"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": -5}, "cache_read_input_tokens"),
        (
            {
                "input_tokens": 1,
                "output_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_1h_input_tokens": 11},
            },
            "cache_creation",
        ),
        ({"promptTokenCount": math.inf, "candidatesTokenCount": 1}, "promptTokenCount"),
    ],
)
def test_malformed_usage_raises_value_error_naming_the_field(usage: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        cost("gpt-4o", usage)


def test_usage_without_known_fields_or_none() -> None:
    with pytest.raises(ValueError, match="no recognised token fields"):
        normalize_usage({"tokens": 5})
    with pytest.raises(ValueError, match="usage is None"):
        normalize_usage(None)


# ------------------------------------------------------------------ models and tables


def test_unknown_model_is_a_config_error_with_suggestions_never_zero() -> None:
    with pytest.raises(ConfigError, match="no price for model 'gpt-4o-minii'.*gpt-4o-mini"):
        cost("gpt-4o-minii", {"prompt_tokens": 1, "completion_tokens": 1})
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("name", ["x" * 100_000, "gpt-4o-" + "-2024" * 20_000, "a-" * 50_000])
def test_absurd_model_names_are_refused_without_searching(name: str) -> None:
    # Each of these took seconds to tens of seconds when the lookup was quadratic in the name.
    with pytest.raises(ConfigError, match="no price for model") as refused:
        cost(name, {"prompt_tokens": 1, "completion_tokens": 1})
    assert len(str(refused.value)) < 1_000  # the message does not echo the whole name
    fallback = PriceTable.default().with_fallback(input=1, output=1)
    assert fallback.cost(name, {"prompt_tokens": 1, "completion_tokens": 0}).fallback


def test_suffix_stripping_never_falls_back_to_a_shorter_prefix_model() -> None:
    table = PriceTable.default()
    assert table.resolve("gpt-4o-mini-2024-07-18").name == "gpt-4o-mini"
    assert table.resolve("gpt-4o-2024-05-13").name == "gpt-4o-2024-05-13"  # own launch price
    with pytest.raises(ConfigError):
        table.resolve("gpt-4o-turbo-max")


def test_explicit_fallback_price_for_unknown_models() -> None:
    table = PriceTable.default().with_fallback(input="1.00", output=2)
    c = table.cost("my-local-llama", {"prompt_tokens": 1_000, "completion_tokens": 1_000})
    assert c.fallback and c.total_micros == 3_000
    assert not table.cost("gpt-4o", {"prompt_tokens": 1, "completion_tokens": 0}).fallback


def test_provider_mismatch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="provider='anthropic'"):
        cost("gpt-4o", {"prompt_tokens": 1, "completion_tokens": 1}, provider="anthropic")


def test_override_file_replaces_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text("""
[table]
version = "acme-1"

[models."gpt-4o"]
provider = "openai"
input = "2.00"
output = "8.00"

[models."acme-llm"]
provider = "acme"
input = 0.5
output = 1.0

[aliases]
"acme" = "acme-llm"
""")
    table = PriceTable.default().with_overrides(path)
    assert table.version.endswith("+acme-1")
    assert table.cost("gpt-4o", {"prompt_tokens": 1_000, "completion_tokens": 0}).total_micros == 2_000
    assert table.cost("acme", {"prompt_tokens": 1_000, "completion_tokens": 1_000}).total_micros == 1_500
    # the default table is untouched
    assert cost("gpt-4o", {"prompt_tokens": 1_000, "completion_tokens": 0}).total_micros == 2_500


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[models."m"]\nprovider = "x"\ninput = 1\noutput = 1\nouput = 2', "model 'm': unknown keys"),
        ('[models."m"]\nprovider = "x"\ninput = 1', "model 'm': missing required price 'output'"),
        ('[models."m"]\nprovider = "x"\ninput = 0.0000001\noutput = 1', "more than 6 decimal"),
        ('[models."m"]\nprovider = "x"\ninput = -1\noutput = 1', "non-negative"),
        ('[models."m"]\nprovider = "x"\ninput = "abc"\noutput = 1', "not a number"),
        ('[models."m"]\ninput = 1\noutput = 1', "'provider'"),
        (
            '[models."m"]\nprovider = "x"\ninput = 1\noutput = 1\ncached_input = 0.1\n'
            '[[models."m".tiers]]\nabove_prompt_tokens = 10\ninput = 2\noutput = 2',
            "model 'm' tier 0: must define exactly the rates",
        ),
        ('[aliases]\n"a" = "nowhere"', "alias 'a' points to 'nowhere'"),
        ('[models."m"\n', "invalid TOML"),
        (f'[models."{"m" * 300}"]\nprovider = "x"\ninput = 1\noutput = 1', "longer than 256"),
    ],
)
def test_invalid_price_files_name_the_offending_model_and_key(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        PriceTable.load(path)


def test_shipped_table_is_versioned_and_covers_the_four_providers() -> None:
    table = PriceTable.default()
    assert table.version and table.as_of[:2] == "20"
    providers = {m.provider for m in table.models.values()}
    assert providers == {"openai", "anthropic", "google", "mistral"}
    for model in table.models.values():
        if model.provider == "anthropic":
            assert model.base.cache_write_5m is not None and model.base.cache_write_1h is not None
        assert model.base.output >= 0 and model.base.input > 0


def test_worst_case_cost_for_admission() -> None:
    assert worst_case_cost("gpt-4o", 1_000, 500) == 7_500  # 1,000*2.5 + 500*10
    # priced as a 1h cache write: 1,000*6 + 500*15
    assert worst_case_cost("claude-sonnet-4-5", 1_000, 500, cache_write="1h") == 13_500
    # long-context tier chosen by the prompt size
    assert worst_case_cost("claude-sonnet-4-5", 300_000, 1_000) == 1_822_500
    with pytest.raises(ValueError, match="max_output_tokens"):
        worst_case_cost("gpt-4o", 1, -1)


# ------------------------------------------------------------------ counts for token limits

_COUNT_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-3, max_value=10**12 + 3),
    st.sampled_from([True, 1.0, float("nan"), "7", 2**70]),
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
                "prompt_tokens",
                "completion_tokens",
                "promptTokenCount",
                "candidates_token_count",
                "input_tokens_details",
                "service_tier",
            ]
        ),
        _COUNT_VALUES,
    ),
    st.one_of(
        st.none(),
        st.dictionaries(st.sampled_from(["ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"]), _COUNT_VALUES),
        st.just(7),
    ),
    st.sampled_from(["anthropic", "openai", None]),
    st.sampled_from(["claude-sonnet-4-5", "claude-3-haiku-20240307", "gpt-4o"]),
)
@settings(max_examples=400, deadline=None)
def test_the_counts_token_limits_read_are_normalize_usages(
    fields: dict[str, object], by_ttl: object, provider: str | None, model: str
) -> None:
    """`limited_tokens` reads Anthropic's usage without building a `TokenUsage`: it gives the
    input and output tokens rate limits count of that usage, or refuses it, exactly as
    `limited_input_tokens` of `normalize_usage`."""
    usage = dict(fields)
    if by_ttl is not None:
        usage["cache_creation"] = by_ttl
    try:
        tokens = normalize_usage(usage, provider)
    except (ValueError, TypeError) as error:
        with pytest.raises(type(error)):
            limited_tokens(usage, provider, model)
        return
    assert limited_tokens(usage, provider, model) == (
        limited_input_tokens(tokens, provider, model),
        tokens.output_tokens,
    )


def test_anthropic_input_limits_leave_cache_reads_out_but_on_claude_3() -> None:
    """Anthropic's ITPM counts the input after the last cache breakpoint and cache writes;
    cache reads only on Claude 3 models. OpenAI's TPM counts every prompt token."""
    usage = {"input_tokens": 10, "cache_read_input_tokens": 5000, "cache_creation_input_tokens": 40, "output_tokens": 7}
    assert limited_tokens(usage, "anthropic", "claude-sonnet-4-5") == (50, 7)
    assert limited_tokens(usage, "anthropic", "claude-3-5-haiku-latest") == (5050, 7)
    cached = {"prompt_tokens": 5000, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 4000}}
    assert limited_tokens(cached, "openai", "gpt-4o") == (5000, 7)
