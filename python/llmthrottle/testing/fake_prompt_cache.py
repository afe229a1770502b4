"""The fake provider's prompt caching, as Anthropic's works.

A request caches its prefix up to the last block that carries `cache_control` (the tools, then
the system blocks, then the messages' content blocks, in that order), per API key and model,
for five minutes (`"ttl": "1h"`: an hour); a later request with the same prefix reads it and
keeps it another TTL. A prefix shorter than `MIN_CACHED_TOKENS` is not cached. The reply's usage
splits the input into the uncached rest (`input_tokens`), what was written
(`cache_creation_input_tokens`, and by TTL in `cache_creation`) and what was read
(`cache_read_input_tokens`); the input limit counts them as the provider does
(`llmthrottle.pricing.usage.limits_count_cache_reads`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..request_estimate import estimate

__all__ = ["CacheSplit", "MIN_CACHED_TOKENS", "PromptCache"]

# Anthropic's minimum cacheable prompt for its Sonnet and Opus models.
MIN_CACHED_TOKENS = 1024
_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class CacheSplit:
    """A request's input tokens: the uncached rest, written to the cache, read from it."""

    uncached: int
    written: int = 0
    read: int = 0
    one_hour: bool = False

    def usage(self) -> dict[str, Any]:
        """The input fields of the reply's `usage`."""
        return {
            "input_tokens": self.uncached,
            "cache_creation_input_tokens": self.written,
            "cache_read_input_tokens": self.read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 0 if self.one_hour else self.written,
                "ephemeral_1h_input_tokens": self.written if self.one_hour else 0,
            },
        }


def _blocks(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _cached_prefix(body: dict[str, Any]) -> tuple[dict[str, Any], bool] | None:
    """The body cut after its last block with `cache_control`, and whether that block asks for
    an hour; None when no block does."""
    places: list[tuple[str, int, int]] = []  # (field, index, content block index or -1)
    for index, tool in enumerate(_blocks(body.get("tools"))):
        if isinstance(tool, dict) and tool.get("cache_control"):
            places.append(("tools", index, -1))
    for index, block in enumerate(_blocks(body.get("system"))):
        if isinstance(block, dict) and block.get("cache_control"):
            places.append(("system", index, -1))
    for index, message in enumerate(_blocks(body.get("messages"))):
        content = message.get("content") if isinstance(message, dict) else None
        for inner, block in enumerate(_blocks(content)):
            if isinstance(block, dict) and block.get("cache_control"):
                places.append(("messages", index, inner))
    if not places:
        return None
    field, index, inner = places[-1]
    prefix: dict[str, Any] = {"model": body.get("model"), "messages": [], "max_tokens": 0}
    if field == "tools":
        prefix["tools"] = body["tools"][: index + 1]
        marked = body["tools"][index]
    else:
        if "tools" in body:
            prefix["tools"] = body["tools"]
        if field == "system":
            prefix["system"] = body["system"][: index + 1]
            marked = body["system"][index]
        else:
            if "system" in body:
                prefix["system"] = body["system"]
            message = body["messages"][index]
            prefix["messages"] = [*body["messages"][:index], {**message, "content": message["content"][: inner + 1]}]
            marked = message["content"][inner]
    control = marked.get("cache_control")
    return prefix, isinstance(control, dict) and control.get("ttl") == "1h"


class PromptCache:
    """The prefixes cached per API key and model, until they expire."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def split(self, body: dict[str, Any], scope: str, input_tokens: int) -> CacheSplit:
        """How the `input_tokens` of `body`, sent by `scope` (API key and model), meet the
        cache; the prefix is written or its TTL renewed."""
        found = _cached_prefix(body)
        if found is None:
            return CacheSplit(input_tokens)
        prefix, one_hour = found
        try:
            prefix_tokens = min(estimate(prefix, "anthropic").input_tokens, input_tokens)
        except ValueError:
            return CacheSplit(input_tokens)
        if prefix_tokens < MIN_CACHED_TOKENS:
            return CacheSplit(input_tokens)
        digest = hashlib.sha256(f"{scope}\0{json.dumps(prefix, sort_keys=True)}".encode()).hexdigest()
        now = self._clock()
        with self._lock:
            hit = self._expiry.get(digest, 0.0) > now
            if not hit and len(self._expiry) >= _MAX_ENTRIES:
                self._expiry = {key: until for key, until in self._expiry.items() if until > now}
                if len(self._expiry) >= _MAX_ENTRIES:
                    self._expiry.clear()  # bounded: a cache may forget, never grow without end
            self._expiry[digest] = now + (3600.0 if one_hour else 300.0)
        rest = input_tokens - prefix_tokens
        if hit:
            return CacheSplit(rest, read=prefix_tokens, one_hour=one_hour)
        return CacheSplit(rest, written=prefix_tokens, one_hour=one_hour)
