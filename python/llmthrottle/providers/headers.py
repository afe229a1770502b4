"""What providers say in their response headers: how long to wait before retrying, and the
limits they announce. One parser per format, shared by every way in (wrap, gateway, batch); the
limit headers' names and formats are read natively (`llmthrottle_core::announced`), as every
reply of every call carries them."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .. import _native

__all__ = [
    "Announcement",
    "announced_limits",
    "announced_news",
    "announced_tuples",
    "credential",
    "format_reset_duration",
    "parse_reset_duration",
    "retry_after_s",
    "rfc3339_in",
]


def _seconds(text: str | None, scale: float = 1.0) -> float | None:
    if text is None:
        return None
    try:
        value = float(text) * scale
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def retry_after_s(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the provider asks to wait, read in the providers' order: `retry-after-ms`,
    `retry-after` (seconds or an HTTP date), Azure's `x-ms-retry-after-ms`; None when absent
    or unreadable."""
    wait = _seconds(headers.get("retry-after-ms"), 1e-3)
    if wait is not None:
        return wait
    text = headers.get("retry-after")
    wait = _seconds(text)
    if wait is not None:
        return wait
    if text:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            moment = None
        if moment is not None:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            return max(0.0, moment.timestamp() - (time.time() if now is None else now))
    return _seconds(headers.get("x-ms-retry-after-ms"), 1e-3)


def format_reset_duration(seconds: float) -> str:
    """A reset in OpenAI's duration form (`20ms`, `1.5s`, `6m0s`): what `parse_reset_duration`
    reads."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3g}s" if minutes else f"{rest:.3g}s"


def rfc3339_in(seconds: float) -> str:
    """The instant `seconds` from now in Anthropic's reset form (RFC 3339, UTC)."""
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_reset_duration(text: str) -> float | None:
    """An `x-ratelimit-reset-*` value in seconds: OpenAI's durations (`6m0s`, `1.5s`, `20ms`,
    `1h2m3s`) or Azure's plain seconds (`45`); None if malformed."""
    return _native.parse_reset_duration(text)


class Announcement(NamedTuple):
    """One limit a response announced: `limit` per `window_s` seconds of `dimension`
    (`requests`, `tokens`, `input_tokens` or `output_tokens`), `remaining` of it now; `reset_s`
    is how long until the limit is whole again."""

    dimension: str
    limit: int
    remaining: int
    reset_s: float | None
    window_s: float = 60.0


def _header_pairs(headers: Mapping[str, str]) -> Sequence[tuple[bytes, bytes] | tuple[bytes, bytes, bytes]]:
    """The header bytes the native readers take: httpx's as it keeps them ((name as sent,
    lower-case name, value) triples, read in place), or any mapping's (name, value) as latin-1."""
    kept = getattr(headers, "_list", None)
    if type(kept) is list:
        return kept
    return [(name.encode("latin-1", "replace"), value.encode("latin-1", "replace")) for name, value in headers.items()]


_CREDENTIALS = (b"authorization", b"x-api-key", b"api-key")
_CREDENTIAL_NAMES = frozenset(_CREDENTIALS)


def credential(headers: Mapping[str, str]) -> str | None:
    """The API key a request presents: `authorization` (OpenAI, Azure's Entra tokens),
    `x-api-key` (Anthropic) or `api-key` (Azure), in that order, in any case; the first header
    of a name counts, and an empty one is passed over. None without one."""
    kept = getattr(headers, "_list", None)
    if type(kept) is not list:
        return headers.get("authorization") or headers.get("x-api-key") or headers.get("api-key")
    # httpx's (name as sent, lower-case name, value) triples, read in place. A loop here costs
    # less than a call into the native module, on a path every call takes with cold caches.
    first: dict[bytes, bytes] = {}
    for _sent, name, value in kept:
        if name in _CREDENTIAL_NAMES and name not in first:
            first[name] = value
    for name in _CREDENTIALS:
        value = first.get(name)
        if value:
            return value.decode("latin-1")
    return None


def announced_limits(provider: str, headers: Mapping[str, str], *, now: float | None = None) -> list[Announcement]:
    """The limits a response of `provider` ("openai", "azure" or "anthropic") announced in its
    headers (names and formats: `llmthrottle_core::announced`). A value that is not a count
    (Azure sometimes sends -1) announces nothing; `now` (POSIX seconds) reads Anthropic's reset
    instants."""
    return [Announcement(*limit) for limit in announced_tuples(provider, headers, now=now)]


def announced_tuples(
    provider: str, headers: Mapping[str, str], *, now: float | None = None
) -> list[tuple[str, int, int, float | None, float]]:
    """`announced_limits` as plain tuples, in the same field order."""
    return _native.announced_limits(_header_pairs(headers), provider, time.time() if now is None else now)


def announced_news(
    provider: str, headers: Mapping[str, str], known: tuple[tuple[str, int, float], ...]
) -> list[tuple[str, int, int, float | None, float]] | None:
    """`announced_tuples`, or None when `headers` announce just the `known` limits
    (`(dimension, limit, window_s)` of each limit above 0, in the same order) and none of them
    is used up: most replies say nothing new of their provider key's limits."""
    return _native.announced_news(_header_pairs(headers), provider, time.time(), known)
