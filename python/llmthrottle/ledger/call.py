"""The one builder of a call's ledger record, whichever way the call came in.

Guard (and so the provider layer, the gateway and the batch runner) and the sidecar's commits
all build their records here, so the same call is the same record: `<field>:<value>` keys fill
the `tenant`, `user`, `team` and `feature` columns, other `<name>:<value>` keys become tags, a
key without a name is kept in the `key` tag, and a call that names a model and its tokens but no
cost is priced from the price table (or recorded at $0 with the `unpriced` tag when the table
does not know the model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..pricing import Cost, PriceTable

__all__ = [
    "COUNT_FIELDS",
    "KEY_FIELDS",
    "RECORD_COLUMNS",
    "STRING_FIELDS",
    "UNFINISHED",
    "call_record",
    "cost_columns",
    "unfinished_record",
]

#: Ledger columns filled from `<field>:<value>` keys or from tags of the same name.
KEY_FIELDS = ("tenant", "user", "team", "feature")
#: Text columns a caller may give (the sidecar's commit carries them beside its dimensions).
STRING_FIELDS = ("model", "provider", *KEY_FIELDS, "outcome")
#: Integer columns: the cost in micro-dollars and the disjoint token kinds.
COUNT_FIELDS = (
    "cost_micros",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
_TOKEN_FIELDS = COUNT_FIELDS[1:]
#: Every column a caller may set (a sidecar commit may carry any of them).
RECORD_COLUMNS = frozenset(STRING_FIELDS + COUNT_FIELDS)
#: The outcome of a call sent whose end was never seen.
UNFINISHED = "unfinished"


def call_record(
    keys: Sequence[str],
    *,
    outcome: str,
    latency_s: float | None,
    tags: Mapping[str, Any] | None = None,
    cost: Cost | None = None,
    model: str | None = None,
    provider: str | None = None,
    cost_micros: int | None = None,
    tokens: Mapping[str, int] | None = None,
    prices: PriceTable | None = None,
    unpriced_micros: int = 0,
) -> dict[str, Any]:
    """The keyword arguments of `Ledger.record` for one call under `keys`.

    `cost` (a priced `Cost`) gives the model, provider, tokens and money. Without it, `model`,
    `provider` and `tokens` (the token columns by name) are recorded, at `cost_micros` when given,
    else priced from `prices` (default: the shipped table), else at `unpriced_micros`. Tags named
    like a key column (`feature="chat"`) fill that column and win over a key of the same field.
    """
    extra = dict(tags or {})
    columns: dict[str, Any] = {name: extra.pop(name) for name in KEY_FIELDS if name in extra}
    plain: list[str] = []
    for key in keys:
        name, sep, value = key.partition(":")
        if not sep:
            plain.append(key)
        elif name in KEY_FIELDS:
            columns.setdefault(name, value)
        else:
            extra.setdefault(name, value)
    if plain and "key" not in extra:
        extra["key"] = plain[0] if len(plain) == 1 else plain
    if cost is not None:
        columns.update(cost_columns(cost))
    else:
        counts = {name: tokens[name] for name in _TOKEN_FIELDS if tokens.get(name)} if tokens else {}
        priced = _priced(model, provider, counts, prices) if cost_micros is None else None
        if priced is not None:
            columns.update(cost_columns(priced))
        else:
            if cost_micros is None and model and counts:
                extra["unpriced"] = True  # a model the price table does not know
            columns.update(
                counts,
                model=model or "unknown",
                provider=provider,
                cost_micros=unpriced_micros if cost_micros is None else cost_micros,
            )
    columns["outcome"], columns["latency_s"], columns["tags"] = outcome, latency_s, extra or None
    return columns


def unfinished_record(
    keys: Sequence[str],
    *,
    model: str,
    provider: str | None,
    reserved_tokens: tuple[int, int],
    worst_case_micros: int,
    latency_s: float | None,
    tags: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a call that was sent but whose reply was never read: left without its
    reply (Guard), or in flight when its process died (the batch runner's intents). The provider
    may have billed it in full, so it is recorded as `UNFINISHED` at the worst case it was
    admitted for (`worst_case_micros`: its input plus its whole output reservation, priced) and
    with the tokens it reserved (input, output)."""
    return call_record(
        keys,
        outcome=UNFINISHED,
        latency_s=latency_s,
        tags=tags,
        model=model,
        provider=provider,
        cost_micros=worst_case_micros,
        tokens={"input_tokens": reserved_tokens[0], "output_tokens": reserved_tokens[1]},
    )


def cost_columns(cost: Cost) -> dict[str, Any]:
    """The ledger columns of a priced call: its model, provider, micro-dollars and tokens."""
    usage = cost.usage
    return {
        "model": cost.model,
        "provider": cost.provider,
        "cost_micros": cost.total_micros,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def _priced(
    model: str | None, provider: str | None, counts: Mapping[str, int], prices: PriceTable | None
) -> Cost | None:
    """The cost of `counts` tokens of `model`, or None when there is nothing to price or the
    table does not know the model."""
    if not model or not counts:
        return None
    from .._native import ConfigError
    from ..pricing import PriceTable, TokenUsage

    usage = TokenUsage(
        input_tokens=counts.get("input_tokens", 0),
        output_tokens=counts.get("output_tokens", 0),
        cached_input_tokens=counts.get("cached_input_tokens", 0),
        cache_write_5m_tokens=counts.get("cache_write_tokens", 0),
        reasoning_tokens=counts.get("reasoning_tokens", 0),
    )
    try:
        return (prices or PriceTable.default()).cost(model, usage, provider)
    except (ConfigError, ValueError):
        return None
