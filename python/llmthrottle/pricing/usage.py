"""Provider usage payloads turned into one billing-ready shape.

Providers count the same tokens differently, and getting that wrong mis-bills every cached call:

- OpenAI chat (`prompt_tokens`) and responses (`input_tokens`) *include* cached tokens in the
  prompt count; reasoning tokens are *included* in the completion/output count.
- Anthropic `input_tokens` *excludes* cache reads and cache writes, which are reported beside it
  (`cache_read_input_tokens`, `cache_creation_input_tokens`, split by TTL in `cache_creation`).
- Gemini `promptTokenCount` includes cached tokens; `thoughtsTokenCount` is *not* included in
  `candidatesTokenCount` but is billed as output.

`TokenUsage` is disjoint instead: every token sits in exactly one priced bucket.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TokenUsage",
    "UsageAccumulator",
    "limited_input_tokens",
    "limited_tokens",
    "limits_count_cache_reads",
    "normalize_usage",
]

# A single request above a trillion tokens is a bug upstream, not a bill to pay.
MAX_TOKENS = 10**12

_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
)
_OPENAI_CHAT_KEYS = ("prompt_tokens", "completion_tokens")
_GEMINI_KEYS = ("promptTokenCount", "prompt_token_count", "candidatesTokenCount", "candidates_token_count")
_ANTHROPIC_ONLY_KEYS = ("cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation")
_RESPONSES_ONLY_KEYS = ("input_tokens_details", "output_tokens_details")
# A usage with none of these, with input_tokens and given as Anthropic's, is of Anthropic's shape.
_OTHER_SHAPES_KEYS = frozenset(_OPENAI_CHAT_KEYS + _GEMINI_KEYS + _RESPONSES_ONLY_KEYS)


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one call, each token in exactly one priced bucket.

    `reasoning_tokens` is informational: those tokens are already counted in `output_tokens`.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_TOKENS:  # every call's usage is read here
                _check_count(value, name)
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError(
                f"reasoning_tokens ({self.reasoning_tokens}) exceeds output_tokens "
                f"({self.output_tokens}); reasoning tokens are part of the output"
            )

    @property
    def cache_write_tokens(self) -> int:
        """Cache writes of both TTLs."""
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        """Every input-side token, cached or not: what long-context price tiers are measured on."""
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens


def _check_count(value: Any, field: str) -> int:
    """Return `value` if it is a plausible token count; raise a ValueError naming `field`."""
    # bool is an int subclass: True would silently count as one token.
    if type(value) is bool or not isinstance(value, int):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"usage field {field!r} must be an integer token count, got {value!r}")
        raise ValueError(f"usage field {field!r} must be an integer token count, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"usage field {field!r} must not be negative, got {value}")
    if value > MAX_TOKENS:
        raise ValueError(f"usage field {field!r} is implausibly large ({value} > {MAX_TOKENS})")
    return value


def _as_mapping(obj: Any) -> Mapping[str, Any] | None:
    """Dicts as they are, pydantic SDK objects (openai, anthropic, google-genai) via model_dump()."""
    if obj is None or isinstance(obj, Mapping):
        return obj
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        dumped = to_dict()
        if isinstance(dumped, Mapping):
            return dumped
    return _AttributeView(obj)


class _AttributeView(Mapping[str, Any]):
    """Read-only mapping over an object's attributes, for SDK objects without model_dump()."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self._obj, key)
        except AttributeError:
            raise KeyError(key) from None

    def __iter__(self) -> Any:
        return iter(k for k in dir(self._obj) if not k.startswith("_"))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _get(usage: Mapping[str, Any], *path: str) -> Any:
    """Value at a nested path, None where any step is missing or null."""
    node: Any = usage
    for key in path:
        if type(node) is not dict:  # a dict, as parsed from a reply, needs no conversion
            node = _as_mapping(node)
            if node is None:
                return None
        node = node.get(key)
    return node


def _count(usage: Mapping[str, Any], *path: str) -> int:
    value = usage.get(path[0]) if len(path) == 1 else _get(usage, *path)
    if type(value) is int and 0 <= value <= MAX_TOKENS:  # the common case, checked in place
        return value
    return _counted(value, ".".join(path))


def _counted(value: Any, field: str) -> int:
    """`value` (of the usage field `field`) as a token count, checked; None counts 0."""
    if value is None:
        return 0
    if type(value) is int and 0 <= value <= MAX_TOKENS:  # the common case, checked in place
        return value
    return _check_count(value, field)


def _has(usage: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
    for key in keys:
        if usage.get(key) is not None:
            return True
    return False


def detect_shape(usage: Mapping[str, Any], provider: str | None = None) -> str:
    """Which provider's counting rules `usage` follows: openai_chat, openai_responses,
    anthropic or gemini."""
    if _has(usage, _OPENAI_CHAT_KEYS):
        return "openai_chat"
    if _has(usage, _GEMINI_KEYS):
        return "gemini"
    if _has(usage, ("input_tokens", "output_tokens")) or _has(usage, _ANTHROPIC_ONLY_KEYS):
        if _has(usage, _ANTHROPIC_ONLY_KEYS):
            return "anthropic"
        if _has(usage, _RESPONSES_ONLY_KEYS):
            return "openai_responses"
        # Without cache fields both providers count identically; the provider only names it.
        return "anthropic" if provider == "anthropic" else "openai_responses"
    raise ValueError(
        "usage has no recognised token fields: expected OpenAI (prompt_tokens/completion_tokens "
        "or input_tokens/output_tokens), Anthropic (input_tokens, cache_read_input_tokens, ...) "
        f"or Gemini (promptTokenCount/candidatesTokenCount); got keys {sorted(usage)!r}"
    )


def normalize_usage(usage: Any, provider: str | None = None) -> TokenUsage:
    """Turn a provider usage dict or SDK object into a `TokenUsage`.

    `provider` only disambiguates a payload whose fields are shared by several providers.
    A `TokenUsage` is returned unchanged.
    """
    if isinstance(usage, TokenUsage):
        return usage
    mapping = _usage_mapping(usage)
    shape = detect_shape(mapping, provider)
    if shape == "openai_chat":
        return _split_openai(
            mapping, "prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details"
        )
    if shape == "openai_responses":
        return _split_openai(mapping, "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")
    if shape == "anthropic":
        input_tokens, cache_read, write_5m, write_1h, output = _anthropic_parts(mapping)
        return TokenUsage(
            input_tokens=input_tokens,
            cached_input_tokens=cache_read,
            cache_write_5m_tokens=write_5m,
            cache_write_1h_tokens=write_1h,
            output_tokens=output,
        )
    return _split_gemini(mapping)


def limits_count_cache_reads(provider: str | None, model: str) -> bool:
    """Whether the provider's input token rate limit counts cache reads: OpenAI's TPM counts
    every prompt token, cached or not; Anthropic's ITPM leaves cache reads out (only the input
    after the last cache breakpoint and cache writes count), except on its Claude 3 models."""
    return provider != "anthropic" or model.startswith("claude-3")


def limited_input_tokens(tokens: TokenUsage, provider: str | None, model: str) -> int:
    """The input tokens of `tokens` the provider's rate limits count (see
    `limits_count_cache_reads`)."""
    if limits_count_cache_reads(provider, model):
        return tokens.prompt_tokens
    return tokens.prompt_tokens - tokens.cached_input_tokens


def limited_tokens(usage: Any, provider: str | None, model: str) -> tuple[int, int]:
    """(input, output) tokens of `usage` as the provider's token rate limits count them
    (`limited_input_tokens` of `normalize_usage(usage, provider)`, and its output). An
    Anthropic reply, whose output learned limits reconcile on every call, is read without
    building its `TokenUsage`."""
    if (
        type(usage) is dict
        and provider == "anthropic"
        and usage.get("input_tokens") is not None
        and usage.keys().isdisjoint(_OTHER_SHAPES_KEYS)
    ):  # `detect_shape` would say "anthropic", asked fewer questions
        input_tokens, cache_read, write_5m, write_1h, output = _anthropic_parts(usage)
        counted = input_tokens + write_5m + write_1h
        return counted + cache_read if limits_count_cache_reads(provider, model) else counted, output
    tokens = normalize_usage(usage, provider)
    return limited_input_tokens(tokens, provider, model), tokens.output_tokens


def _usage_mapping(usage: Any) -> Mapping[str, Any]:
    mapping = usage if type(usage) is dict else _as_mapping(usage)  # a parsed reply is a dict
    if mapping is None:
        raise ValueError(
            "usage is None: the response carried no usage (for OpenAI streams, "
            "request it with stream_options={'include_usage': True})"
        )
    return mapping


def _split_openai(
    usage: Mapping[str, Any], prompt_key: str, output_key: str, prompt_details: str, output_details: str
) -> TokenUsage:
    prompt = _count(usage, prompt_key)
    cached = _count(usage, prompt_details, "cached_tokens")
    if cached > prompt:
        raise ValueError(
            f"usage field '{prompt_details}.cached_tokens' ({cached}) exceeds "
            f"{prompt_key!r} ({prompt}), which includes cached tokens"
        )
    output = _count(usage, output_key)
    reasoning = _count(usage, output_details, "reasoning_tokens")
    if reasoning > output:
        raise ValueError(
            f"usage field '{output_details}.reasoning_tokens' ({reasoning}) "
            f"exceeds {output_key!r} ({output}), which includes reasoning tokens"
        )
    return TokenUsage(
        input_tokens=prompt - cached, cached_input_tokens=cached, output_tokens=output, reasoning_tokens=reasoning
    )


def _anthropic_parts(usage: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """(input, cache reads, 5-minute cache writes, 1-hour cache writes, output) of Anthropic's
    usage, each checked."""
    get = usage.get
    split = get("cache_creation")
    if split is None:
        write_5m = write_1h = 0
    elif type(split) is dict:  # as parsed from a reply: read in place (every call's usage is)
        write_5m = _counted(split.get("ephemeral_5m_input_tokens"), "cache_creation.ephemeral_5m_input_tokens")
        write_1h = _counted(split.get("ephemeral_1h_input_tokens"), "cache_creation.ephemeral_1h_input_tokens")
    else:
        write_5m = _count(usage, "cache_creation", "ephemeral_5m_input_tokens")
        write_1h = _count(usage, "cache_creation", "ephemeral_1h_input_tokens")
    write_total = get("cache_creation_input_tokens")
    if write_total is not None:
        write_total = _counted(write_total, "cache_creation_input_tokens")
        split_total = write_5m + write_1h
        if split_total > write_total:
            raise ValueError(
                f"usage field 'cache_creation' splits {split_total} tokens but 'cache_creation_input_tokens' "
                f"is {write_total}"
            )
        # Older API versions report only the total; the default TTL is 5 minutes.
        write_5m += write_total - split_total
    return (
        _counted(get("input_tokens"), "input_tokens"),
        _counted(get("cache_read_input_tokens"), "cache_read_input_tokens"),
        write_5m,
        write_1h,
        _counted(get("output_tokens"), "output_tokens"),
    )


def _gemini_count(usage: Mapping[str, Any], camel: str, snake: str) -> int:
    # The REST API speaks camelCase, the google-genai SDK snake_case.
    if usage.get(camel) is not None:
        return _count(usage, camel)
    return _count(usage, snake)


def _split_gemini(usage: Mapping[str, Any]) -> TokenUsage:
    prompt = _gemini_count(usage, "promptTokenCount", "prompt_token_count")
    cached = _gemini_count(usage, "cachedContentTokenCount", "cached_content_token_count")
    if cached > prompt:
        raise ValueError(
            f"usage field 'cachedContentTokenCount' ({cached}) exceeds "
            f"'promptTokenCount' ({prompt}), which includes cached tokens"
        )
    tool_prompt = _gemini_count(usage, "toolUsePromptTokenCount", "tool_use_prompt_token_count")
    candidates = _gemini_count(usage, "candidatesTokenCount", "candidates_token_count")
    thoughts = _gemini_count(usage, "thoughtsTokenCount", "thoughts_token_count")
    return TokenUsage(
        input_tokens=prompt - cached + tool_prompt,
        cached_input_tokens=cached,
        output_tokens=candidates + thoughts,
        reasoning_tokens=thoughts,
    )


class UsageAccumulator:
    """Folds the usage carried by a stream's events into the usage of the whole call.

    Feed it every event (or only the ones carrying usage) with `add()`:

    - OpenAI chat streams carry usage on the final chunk (with `stream_options.include_usage`);
      responses streams on `response.completed`;
    - Anthropic streams carry input and cache counts on `message_start` and cumulative output
      counts on each `message_delta`;
    - Gemini streams carry cumulative `usageMetadata` on chunks.

    Every provider reports cumulative counts, so for each field the latest reported value wins:
    that is the only rule, and it is why feeding the same event twice cannot double-count.
    """

    __slots__ = ("_fields", "model", "provider", "events_with_usage")

    def __init__(self, provider: str | None = None) -> None:
        self._fields: dict[str, Any] = {}
        self.model: str | None = None
        self.provider = provider
        self.events_with_usage = 0

    def add(self, event: Any) -> None:
        """Fold one stream event, chunk, or bare usage payload."""
        mapping = _as_mapping(event)
        if mapping is None:
            return
        usage, model = _usage_in_event(mapping)
        if model is not None and self.model is None:
            self.model = model
        if usage is None:
            return
        self.events_with_usage += 1
        _merge_latest(self._fields, usage)

    @property
    def raw(self) -> dict[str, Any]:
        """The merged usage payload in the provider's own field names."""
        return _deep_copy(self._fields)

    @property
    def usage(self) -> TokenUsage:
        """The call's usage so far; raises ValueError if no event carried any."""
        if not self._fields:
            raise ValueError(
                "no stream event carried usage (for OpenAI streams request it with "
                "stream_options={'include_usage': True})"
            )
        return normalize_usage(self._fields, self.provider)


def _usage_in_event(event: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, str | None]:
    """(usage payload, model name) found in one stream event, either may be None."""
    kind = event.get("type")
    if kind == "message_start":  # Anthropic
        message = _as_mapping(event.get("message")) or {}
        return _as_mapping(message.get("usage")), message.get("model")
    if kind in ("response.completed", "response.done", "response.incomplete", "response.failed"):
        response = _as_mapping(event.get("response")) or {}
        return _as_mapping(response.get("usage")), response.get("model")
    model = event.get("model") or event.get("modelVersion") or event.get("model_version")
    for key in ("usage", "usageMetadata", "usage_metadata"):
        if key in event:
            return _as_mapping(event.get(key)), model
    if kind is not None or "choices" in event or "candidates" in event or "delta" in event:
        return None, model  # a content event without usage
    return event, model  # a bare usage payload


def _merge_latest(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if value is None:
            continue  # a null field means "not reported here", not zero
        nested = _nested_mapping(value)
        if nested is not None:
            target = into.get(key)
            if not isinstance(target, dict):
                target = into[key] = {}
            _merge_latest(target, nested)
        else:
            into[key] = value


def _nested_mapping(value: Any) -> Mapping[str, Any] | None:
    """A nested usage object as a mapping, None for a scalar."""
    if isinstance(value, (int, float, str, bytes, list, tuple)):
        return None
    return _as_mapping(value)


def _deep_copy(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in fields.items()}
