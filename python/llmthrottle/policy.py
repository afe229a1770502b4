"""Limit configuration: the forms users write, normalised into the engine's rule tuples.

A limits mapping names a dimension and its limit::

    {"requests": "500/min",                       # a rate: N/unit, burst = N
     "tokens": {"rate": "30k/min", "burst": 5000}, # a rate with its own burst
     "output_tokens": {"rate": "8k/min", "refund": "whole"},  # refunds come back whole
     "input_tokens": ["1k/s", "30k/min"],         # several limits on one dimension
     "cost_usd": {"quota": 100, "per": "month"},  # a calendar quota (resets on the boundary)
     "concurrency": 20}                           # calls in flight

A refund (a commit below the reservation) gives back by default only what of its own charge has
not drained yet, which never admits more than `burst + rate * T`; with several calls in flight it
comes back short. `"refund": "whole"` gives it back whole, as far as the bucket has room: the
semantics of a provider's token bucket, for a limit that mirrors one.

Rules apply different limits to keys matching glob patterns; the first match wins::

    {"user:*": {"requests": "60/min"}, "team:*": {"tokens": "1M/min"}}
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from ._native import ConfigError

__all__ = ["LimitsConfig", "RulesConfig", "normalize"]

LimitValue = str | int | float | Mapping[str, Any] | Sequence[Any]
LimitsConfig = Mapping[str, LimitValue]
RulesConfig = Mapping[str, LimitsConfig]

# (dimension, kind, a, b): ("tokens", "rate", "30k/min", 5000) | ("concurrency", "concurrency",
# 20, None) | ("cost_usd", "quota", 100, "month"); a rate whose refunds come back whole has a
# fifth field: ("output_tokens", "rate", "8k/min", None, "whole")
LimitTuple = tuple[str, str, Any, Any] | tuple[str, str, Any, Any, str]
RuleTuple = tuple[str, list[LimitTuple]]

_RATE_KEYS = {"rate", "burst", "refund"}
_REFUNDS = ("undrained", "whole")
_QUOTA_KEYS = {"quota", "per"}


def normalize(limits: LimitsConfig | None, rules: RulesConfig | None, budgets: Sequence[Any] = ()) -> list[Any]:
    """Rule tuples for the engine from either a limits mapping (applies to every key) or a
    mapping of key pattern to limits mapping, followed by the budgets' rules in their own layer.
    Raises `ConfigError` naming the offending entry."""
    from .budget import budget_rules

    if limits is None and rules is None and budgets:
        return list(budget_rules(list(budgets)))
    return [*_rate_rules(limits, rules), *budget_rules(list(budgets))]


def _rate_rules(limits: LimitsConfig | None, rules: RulesConfig | None) -> list[RuleTuple]:
    if (limits is None) == (rules is None):
        raise ConfigError("give exactly one of `limits` (for every key) or `rules` (per key pattern)")
    if limits is not None:
        return [("*", _limits(limits, "limits"))]
    assert rules is not None
    if not isinstance(rules, Mapping) or not rules:
        raise ConfigError("rules must be a non-empty mapping of key pattern to limits")
    out: list[RuleTuple] = []
    for pattern, rule_limits in rules.items():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"rules: key pattern {pattern!r} must be a non-empty str")
        out.append((pattern, _limits(rule_limits, f"rules[{pattern!r}]")))
    return out


def _limits(limits: Any, where: str) -> list[LimitTuple]:
    if not isinstance(limits, Mapping):
        raise ConfigError(f"{where} must be a mapping of dimension to limit, not {type(limits).__name__}")
    if not limits:
        raise ConfigError(f"{where} is empty: name at least one limit, e.g. {{'requests': '500/min'}}")
    out: list[LimitTuple] = []
    for dimension, value in limits.items():
        if not isinstance(dimension, str):
            raise ConfigError(f"{where}: dimension {dimension!r} must be a str")
        path = f"{where}[{dimension!r}]"
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ConfigError(f"{path} is an empty list")
        for item in values:
            out.append(_limit(dimension, item, path))
    return out


def _limit(dimension: str, value: Any, path: str) -> LimitTuple:
    if dimension == "concurrency":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path} must be a positive int (calls in flight), not {value!r}")
        return (dimension, "concurrency", value, None)
    if isinstance(value, str):
        return (dimension, "rate", value, None)
    if isinstance(value, Mapping):
        keys = set(value)
        if keys and keys <= _RATE_KEYS and "rate" in keys:
            burst = value.get("burst")
            if burst is not None and (isinstance(burst, bool) or not isinstance(burst, (int, float))):
                raise ConfigError(f"{path}: burst must be a number, not {burst!r}")
            if not isinstance(value["rate"], str):
                raise ConfigError(f"{path}: rate must be a string such as '500/min'")
            refund = value.get("refund", "undrained")
            if refund not in _REFUNDS:
                raise ConfigError(f"{path}: refund must be 'undrained' or 'whole', not {refund!r}")
            if refund == "whole":
                return (dimension, "rate", value["rate"], burst, "whole")
            return (dimension, "rate", value["rate"], burst)
        if keys == _QUOTA_KEYS:
            amount, per = value["quota"], value["per"]
            if isinstance(amount, bool) or not isinstance(amount, (int, float)):
                raise ConfigError(f"{path}: quota must be a number, not {amount!r}")
            if not isinstance(per, str):
                raise ConfigError(f"{path}: per must be day, week, month or a duration such as '12h'")
            return (dimension, "quota", amount, per)
        raise ConfigError(
            f"{path}: expected {{'rate': ..., 'burst': ..., 'refund': ...}} or {{'quota': ..., 'per': ...}}, "
            f"got keys {sorted(map(str, keys))}"
        )
    hint = ""
    if isinstance(value, int) and not isinstance(value, bool) and difflib.get_close_matches(dimension, ["concurrency"]):
        hint = " (did you mean 'concurrency', a cap on calls in flight?)"
    raise ConfigError(
        f"{path} must be a rate string such as '500/min', a mapping, or a list of them; "
        f"not {type(value).__name__}{hint}"
    )
