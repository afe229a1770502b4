"""The exact response cache (`lt.wrap(..., cache=lt.ResponseCache())`), opt-in: a whole
(non-streaming) reply kept for a request identical to one already answered, byte for byte once
its JSON is put in canonical form, to the same endpoint, model and API key. A hit is answered
without reaching the provider or being admitted, and recorded at $0 with outcome `cache_hit`.

Only successful replies are kept, for `ttl_s` seconds, at most `max_entries` of them and
`max_bytes` in all (the least recently used go first). The cache lives in this process.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .._native import ConfigError

__all__ = ["CachedReply", "ResponseCache"]


@dataclass(frozen=True)
class CachedReply:
    """A reply as it was received: its status, content type and body."""

    status: int
    content_type: str
    content: bytes


class ResponseCache:
    """Whole replies by request, for `ttl_s` seconds, bounded by `max_entries` and `max_bytes`."""

    def __init__(self, ttl_s: float = 300.0, max_entries: int = 1024, max_bytes: int = 64 << 20) -> None:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s <= 365 * 86400:
            raise ConfigError(f"ttl_s must be a positive number of seconds (at most a year), not {ttl_s!r}")
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, not {value!r}")
        self.ttl_s = float(ttl_s)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple[float, CachedReply]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(scope: str, path: str, body: dict[str, Any]) -> str:
        """The key of a request: its provider scope (server, API key, model), path and body."""
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.blake2b(f"{scope}\n{path}\n{canonical}".encode(), digest_size=20).hexdigest()

    def get(self, key: str) -> CachedReply | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > time.monotonic():
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            if entry is not None:
                self._drop(key)
            self.misses += 1
            return None

    def put(self, key: str, reply: CachedReply) -> None:
        if len(reply.content) > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (time.monotonic() + self.ttl_s, reply)
            self._bytes += len(reply.content)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        _, reply = self._entries.pop(key)
        self._bytes -= len(reply.content)
