"""Pricing: what an LLM call costs, in exact integer micro-dollars.

    >>> import llmthrottle as lt
    >>> lt.cost("gpt-4o-mini", {"prompt_tokens": 1000, "completion_tokens": 200}).total_micros
    270

The shipped table (`prices.toml`) holds list prices per 1M tokens for OpenAI, Anthropic, Google
and Mistral models; `PriceTable.with_overrides()` adds or replaces models from a file of the same
format, and `PriceTable.with_fallback()` prices unknown models instead of raising `ConfigError`.
"""

from __future__ import annotations

from typing import Any

from .table import Cost, ModelPrice, PriceTable, Rates
from .usage import TokenUsage, UsageAccumulator, normalize_usage

__all__ = [
    "Cost",
    "ModelPrice",
    "PriceTable",
    "Rates",
    "TokenUsage",
    "UsageAccumulator",
    "batch_price_micros",
    "cost",
    "normalize_usage",
    "worst_case_cost",
]


def batch_price_micros(list_price_micros: int) -> int:
    """What a call sent through a provider's batch API costs: half the list price (OpenAI's
    Batch API and Anthropic's Message Batches both bill 50%), a half micro-dollar rounded up."""
    return (list_price_micros + 1) // 2


def cost(model: str, usage: Any, provider: str | None = None, *, prices: PriceTable | None = None) -> Cost:
    """Price one call. `usage` is the provider's usage (dict or SDK object), a `TokenUsage`, or a
    `UsageAccumulator`'s `.usage`. Unknown models raise `ConfigError` unless `prices` has a
    fallback; malformed usage raises `ValueError` naming the field."""
    return (prices or PriceTable.default()).cost(model, usage, provider)


def worst_case_cost(
    model: str,
    input_tokens: int,
    max_output_tokens: int,
    *,
    provider: str | None = None,
    cache_write: str | None = None,
    prices: PriceTable | None = None,
) -> int:
    """The most a call can cost, in micro-dollars, before it is sent (for budget admission)."""
    return (prices or PriceTable.default()).worst_case_cost(
        model, input_tokens, max_output_tokens, provider=provider, cache_write=cache_write
    )
