"""The price table: model name -> exact per-token rates, loaded from TOML.

Money is exact. A rate is stored as integer micro-dollars per 1,000,000 tokens, so
`tokens * rate` is an integer number of pico-dollars (10^-12 $); the pieces of one call are summed
exactly and rounded *up* to a whole micro-dollar once, so a budget never under-counts by rounding.
Floats appear only in `Cost.total_usd`, for display.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Union

from .._native import ConfigError
from .usage import TokenUsage, _check_count, normalize_usage

__all__ = ["Cost", "ModelPrice", "PriceTable", "Rates"]

_RATE_KEYS = ("input", "cached_input", "cache_write_5m", "cache_write_1h", "output")
_MODEL_KEYS = frozenset(("provider", "tiers", *_RATE_KEYS))
_TIER_KEYS = frozenset(("above_prompt_tokens", *_RATE_KEYS))
_TABLE_KEYS = frozenset(("version", "as_of", "currency"))
_PICOS_PER_MICRO = 1_000_000

# Dated snapshot and release suffixes, tried in order after an exact lookup fails. Each maps a
# name to its base model only if that base is itself in the table: no fuzzy prefix matching, so
# "gpt-4o-mini-2024-07-18" reaches "gpt-4o-mini" and never "gpt-4o".
_MAX_MODEL_NAME = 256
_SUFFIXES = (
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # OpenAI: gpt-4o-2024-08-06
    re.compile(r"[-@]\d{8}$"),  # Anthropic: claude-sonnet-4-5-20250929, Vertex @20240620
    re.compile(r"-\d{2}-\d{4}$"),  # Gemini previews: -09-2025
    re.compile(r"-\d{2}-\d{2}$"),  # Gemini previews: -05-20
    re.compile(r"-\d{4}$"),  # OpenAI legacy -0613, Mistral -2411
    re.compile(r"-\d{3}$"),  # Gemini stable revisions: -001
    re.compile(r"-latest$"),
)
_NAMESPACE_PREFIX = re.compile(r"^(?:models/|[a-z][a-z0-9_-]*/)")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True, slots=True)
class Rates:
    """Integer micro-dollars per 1M tokens. None: the model has no such price."""

    input: int
    output: int
    cached_input: int | None = None
    cache_write_5m: int | None = None
    cache_write_1h: int | None = None


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model: base rates plus long-context tiers sorted by threshold."""

    name: str
    provider: str
    base: Rates
    tiers: tuple[tuple[int, Rates], ...] = ()

    def rates_for(self, prompt_tokens: int) -> tuple[Rates, int | None]:
        """The rates that apply to a request with this prompt size, and the tier threshold."""
        chosen, threshold = self.base, None
        for above, rates in self.tiers:
            if prompt_tokens > above:
                chosen, threshold = rates, above
        return chosen, threshold


@dataclass(frozen=True, slots=True)
class Cost:
    """The price of one call.

    `total_micros` is the amount to charge (integer micro-dollars, rounded up once).
    `breakdown_micros` holds the exact, unrounded share of each bucket (input, cached_input,
    cache_write, output; reasoning is output) as Decimal micro-dollars.
    """

    model: str
    resolved_model: str
    provider: str
    usage: TokenUsage
    total_micros: int
    breakdown_micros: Mapping[str, Decimal]
    tier_above_prompt_tokens: int | None
    price_table_version: str
    fallback: bool = False

    @property
    def total_usd(self) -> float:
        """For display only: never add these floats up, add `total_micros`."""
        return self.total_micros / 1_000_000


class _Breakdown(Mapping[str, Decimal]):
    """A cost's share per bucket in Decimal micro-dollars, converted from pico-dollars when read:
    most costs are charged and recorded by their total alone."""

    __slots__ = ("_picos",)

    def __init__(self, picos: dict[str, int]) -> None:
        self._picos = picos

    def __getitem__(self, bucket: str) -> Decimal:
        return Decimal(self._picos[bucket]).scaleb(-6)

    def __iter__(self) -> Iterator[str]:
        return iter(self._picos)

    def __len__(self) -> int:
        return len(self._picos)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


@dataclass(frozen=True)
class PriceTable:
    """An immutable price table. Build with `default()`, `load()`, `from_dict()`; derive with
    `with_overrides()` and `with_fallback()`."""

    version: str
    as_of: str
    models: Mapping[str, ModelPrice]
    aliases: Mapping[str, str] = field(default_factory=dict)
    fallback: ModelPrice | None = None
    _cache: dict[tuple[str, str | None], ModelPrice] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ building

    @classmethod
    def default(cls) -> PriceTable:
        """The table shipped with llmthrottle (prices.toml)."""
        return _default_table()

    @classmethod
    def load(cls, path: PathLike) -> PriceTable:
        """Read a table from a TOML file in the prices.toml format."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"price file {os.fspath(path)}: invalid TOML: {e}") from None
        return cls.from_dict(data, source=os.fspath(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> PriceTable:
        """Build from the parsed TOML structure; errors name `source` and the offending key."""
        meta = data.get("table", {})
        _require_table(meta, f"{source}: [table]")
        unknown = set(meta) - _TABLE_KEYS
        if unknown:
            raise ConfigError(f"{source}: [table] has unknown keys {sorted(unknown)}")
        if meta.get("currency", "USD") != "USD":
            raise ConfigError(f"{source}: [table] currency must be 'USD'")
        unknown = set(data) - {"table", "models", "aliases"}
        if unknown:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")
        raw_models = data.get("models", {})
        _require_table(raw_models, f"{source}: [models]")
        models = {name: _parse_model(name, spec, source) for name, spec in raw_models.items()}
        aliases = data.get("aliases", {})
        _require_table(aliases, f"{source}: [aliases]")
        table = cls(
            version=str(meta.get("version", "unversioned")),
            as_of=str(meta.get("as_of", "unknown")),
            models=MappingProxyType(models),
            aliases=MappingProxyType(dict(aliases)),
        )
        table._check_aliases(source)
        return table

    def with_overrides(self, overrides: PriceTable | PathLike | Mapping[str, Any]) -> PriceTable:
        """A new table where each model of `overrides` replaces (or adds) the whole entry of
        that name, and its aliases are added. Whole-entry replacement is deliberate: merging
        single rates would silently mix a new input price with a stale output price."""
        if isinstance(overrides, PriceTable):
            other = overrides
        elif isinstance(overrides, Mapping):
            other = PriceTable.from_dict(overrides, source="<overrides>")
        else:
            other = PriceTable.load(overrides)
        models = {**self.models, **other.models}
        aliases = {k: v for k, v in self.aliases.items() if k not in other.models}
        aliases.update(other.aliases)
        table = PriceTable(
            version=f"{self.version}+{other.version}",
            as_of=self.as_of,
            models=MappingProxyType(models),
            aliases=MappingProxyType(aliases),
            fallback=other.fallback or self.fallback,
        )
        table._check_aliases("<overrides>")
        return table

    def with_fallback(
        self,
        *,
        input: Any,
        output: Any,
        cached_input: Any = None,
        cache_write_5m: Any = None,
        cache_write_1h: Any = None,
        provider: str = "unknown",
    ) -> PriceTable:
        """A new table that prices unknown models at these dollars-per-1M-token rates instead
        of raising ConfigError. Costs priced this way have `fallback=True`."""
        spec = {
            "provider": provider,
            "input": input,
            "output": output,
            "cached_input": cached_input,
            "cache_write_5m": cache_write_5m,
            "cache_write_1h": cache_write_1h,
        }
        spec = {k: v for k, v in spec.items() if v is not None}
        return replace(self, fallback=_parse_model("<fallback>", spec, "with_fallback"), _cache={})

    def _check_aliases(self, source: str) -> None:
        for alias, target in self.aliases.items():
            if not isinstance(target, str) or target not in self.models:
                raise ConfigError(f"{source}: alias {alias!r} points to {target!r}, which is not a model in the table")
            if alias in self.models:
                raise ConfigError(f"{source}: alias {alias!r} is also a model name")

    # ------------------------------------------------------------------ looking up

    def resolve(self, model: str, provider: str | None = None) -> ModelPrice:
        """The price entry for `model`: exact name, alias, namespace prefix stripped
        (`models/`, `openai/`), then dated/`-latest` suffixes stripped. Raises ConfigError for
        an unknown model unless a fallback is set, and if `provider` contradicts the entry."""
        key = (model, provider)
        found = self._cache.get(key)
        if found is not None:
            return found
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model must be a non-empty string, got {model!r}")
        # No priced name is this long; a longer one (it may come from a request) is not searched,
        # so looking it up costs the same as a short unknown name.
        found = self._lookup(model) if len(model) <= _MAX_MODEL_NAME else None
        if found is None:
            if self.fallback is None:
                raise ConfigError(self._unknown_message(model))
            found = self.fallback
        elif provider is not None and found.provider != provider:
            raise ConfigError(
                f"model {model!r} is priced as provider {found.provider!r} in "
                f"price table {self.version}, but provider={provider!r} was given"
            )
        if len(self._cache) >= 4096:  # model names may come from requests: stay bounded
            self._cache.clear()
        self._cache[key] = found
        return found

    def _lookup(self, model: str) -> ModelPrice | None:
        name = model.strip().lower()
        candidates = [name]
        stripped = _NAMESPACE_PREFIX.sub("", name)
        if stripped != name:
            candidates.append(stripped)
        for candidate in candidates:
            current = candidate
            while True:
                hit = self._exact(current)
                if hit is not None:
                    return hit
                for pattern in _SUFFIXES:
                    shorter = pattern.sub("", current)
                    if shorter != current:
                        current = shorter
                        break
                else:
                    break
        return None

    def _exact(self, name: str) -> ModelPrice | None:
        price = self.models.get(name)
        if price is None and name in self.aliases:
            price = self.models[self.aliases[name]]
        return price

    def _unknown_message(self, model: str) -> str:
        near = (
            difflib.get_close_matches(model.lower(), [*self.models, *self.aliases], n=3)
            if len(model) <= _MAX_MODEL_NAME
            else []
        )
        hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
        shown = model if len(model) <= _MAX_MODEL_NAME else f"{model[:_MAX_MODEL_NAME]}..."
        return (
            f"no price for model {shown!r} in price table {self.version} "
            f"(as of {self.as_of}){hint}; add it with PriceTable.with_overrides() or set a "
            "fallback price with PriceTable.with_fallback()"
        )

    # ------------------------------------------------------------------ pricing

    def cost(self, model: str, usage: Any, provider: str | None = None) -> Cost:
        """Price one call from its usage (dict, SDK object or TokenUsage)."""
        price = self.resolve(model, provider)
        tokens = normalize_usage(usage, provider or price.provider)
        rates, tier = price.rates_for(tokens.prompt_tokens)
        cached_rate = rates.cached_input if rates.cached_input is not None else rates.input
        picos = {
            "input": tokens.input_tokens * rates.input,
            # A model without a cache-read price is charged the full input rate: over-, never
            # under-charging.
            "cached_input": tokens.cached_input_tokens * cached_rate,
            "cache_write": (
                _write_picos(price, tokens.cache_write_5m_tokens, rates.cache_write_5m, "cache_write_5m")
                + _write_picos(price, tokens.cache_write_1h_tokens, rates.cache_write_1h, "cache_write_1h")
            ),
            "output": tokens.output_tokens * rates.output,
        }
        total_picos = sum(picos.values())
        return Cost(
            model=model,
            resolved_model=model if price is self.fallback else price.name,
            provider=provider or price.provider,
            usage=tokens,
            total_micros=-(-total_picos // _PICOS_PER_MICRO),
            breakdown_micros=_Breakdown(picos),
            tier_above_prompt_tokens=tier,
            price_table_version=self.version,
            fallback=price is self.fallback,
        )

    def worst_case_cost(
        self,
        model: str,
        input_tokens: int,
        max_output_tokens: int,
        provider: str | None = None,
        cache_write: str | None = None,
    ) -> int:
        """Upper bound in micro-dollars of a call before it is sent, for budget admission.

        Input is priced uncached (a cache hit only makes it cheaper); with
        `cache_write="5m"|"1h"` the whole prompt is priced as a cache write, the most expensive
        way Anthropic can bill it. All output tokens are priced at the output rate.
        """
        _check_count(input_tokens, "input_tokens")
        _check_count(max_output_tokens, "max_output_tokens")
        price = self.resolve(model, provider)
        rates, _ = price.rates_for(input_tokens)
        input_rate = rates.input
        if cache_write is not None:
            if cache_write not in ("5m", "1h"):
                raise ValueError(f"cache_write must be '5m', '1h' or None, got {cache_write!r}")
            write_rate = rates.cache_write_5m if cache_write == "5m" else rates.cache_write_1h
            if write_rate is None:
                raise ConfigError(f"model {price.name!r} has no cache_write_{cache_write} price")
            input_rate = max(input_rate, write_rate)
        picos = input_tokens * input_rate + max_output_tokens * rates.output
        return -(-picos // _PICOS_PER_MICRO)


def _write_picos(price: ModelPrice, tokens: int, rate: int | None, name: str) -> int:
    if tokens == 0:
        return 0
    if rate is None:
        raise ConfigError(
            f"usage reports {tokens} {name} tokens but model {price.name!r} has no "
            f"{name} price; add it to the price table"
        )
    return tokens * rate


def _require_table(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table, got {type(value).__name__}")


def _parse_model(name: str, spec: Any, source: str) -> ModelPrice:
    where = f"{source}: model {name!r}"
    if len(name) > _MAX_MODEL_NAME:
        raise ConfigError(f"{source}: model name {name[:40]!r}... is longer than {_MAX_MODEL_NAME} characters")
    _require_table(spec, where)
    unknown = set(spec) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_MODEL_KEYS)})")
    provider = spec.get("provider")
    if not isinstance(provider, str) or not provider:
        raise ConfigError(f"{where}: 'provider' must be a non-empty string")
    if name != name.strip().lower():
        raise ConfigError(f"{where}: model names must be lowercase without spaces")
    base = _parse_rates(spec, where)
    tiers: list[tuple[int, Rates]] = []
    raw_tiers = spec.get("tiers", [])
    if not isinstance(raw_tiers, list):
        raise ConfigError(f"{where}: 'tiers' must be an array of tables")
    for i, tier in enumerate(raw_tiers):
        tier_where = f"{where} tier {i}"
        _require_table(tier, tier_where)
        unknown = set(tier) - _TIER_KEYS
        if unknown:
            raise ConfigError(f"{tier_where}: unknown keys {sorted(unknown)}")
        above = tier.get("above_prompt_tokens")
        if type(above) is not int or above <= 0:
            raise ConfigError(f"{tier_where}: 'above_prompt_tokens' must be a positive integer")
        # A tier restates every rate its base has: inheriting one silently would bill
        # long-context cache reads at the short-context price.
        missing = [k for k in _RATE_KEYS if (k in spec) != (k in tier)]
        if missing:
            raise ConfigError(f"{tier_where}: must define exactly the rates of the base entry; mismatched: {missing}")
        if tiers and above <= tiers[-1][0]:
            raise ConfigError(f"{tier_where}: tiers must be sorted by above_prompt_tokens")
        tiers.append((above, _parse_rates(tier, tier_where)))
    return ModelPrice(name=name, provider=provider, base=base, tiers=tuple(tiers))


def _parse_rates(spec: Mapping[str, Any], where: str) -> Rates:
    for required in ("input", "output"):
        if required not in spec:
            raise ConfigError(f"{where}: missing required price {required!r}")
    values = {k: _micros_per_million(spec[k], f"{where}: {k!r}") for k in _RATE_KEYS if k in spec}
    return Rates(**values)


def _micros_per_million(value: Any, where: str) -> int:
    """Dollars per 1M tokens (number or string) -> exact integer micro-dollars per 1M tokens."""
    if type(value) is bool or not isinstance(value, (int, float, str, Decimal)):
        raise ConfigError(f"{where} must be a number of dollars per 1M tokens, got {value!r}")
    try:
        # repr() of a float is its shortest exact decimal spelling: 0.075 stays 0.075.
        dollars = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"{where} is not a number: {value!r}") from None
    if not dollars.is_finite() or dollars < 0:
        raise ConfigError(f"{where} must be a finite, non-negative price, got {value!r}")
    micros = dollars * 1_000_000
    if micros != micros.to_integral_value():
        raise ConfigError(f"{where}: {value!r} has more than 6 decimal places of dollars")
    return int(micros)


@lru_cache(maxsize=1)
def _default_table() -> PriceTable:
    data = resources.files("llmthrottle").joinpath("prices.toml").read_bytes()
    return PriceTable.from_dict(tomllib.loads(data.decode("utf-8")), source="prices.toml")
