"""What providers say in their response headers: how long to wait before retrying, and the
limits they announce. One parser per format, shared by every way in (wrap, gateway, batch)."""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import math
import re
import time
from collections.abc import Mapping
from typing import NamedTuple

__all__ = [
    "Announcement",
    "announced_limits",
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


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_PLAIN_SECONDS = re.compile(r"\d+(?:\.\d+)?")


@functools.lru_cache(maxsize=1024)
def parse_reset_duration(text: str) -> float | None:
    """An `x-ratelimit-reset-*` value in seconds: OpenAI's durations (`6m0s`, `1.5s`, `20ms`,
    `1h2m3s`) or Azure's plain seconds (`45`); None if malformed. Cached: a provider repeats a
    handful of these on every response."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    if _PLAIN_SECONDS.fullmatch(text):
        return float(text)
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        position = match.end()
        value = float(match.group(1))
        total += value * {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    return total if position == len(text) else None


@functools.lru_cache(maxsize=1024)
def _rfc3339_timestamp(text: str) -> float | None:
    """An RFC 3339 instant as a POSIX timestamp (UTC when no offset is given); None if malformed.
    Cached: a provider repeats the same reset instant on every response within its second."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _rfc3339_in_s(text: str, now: float) -> float | None:
    if len(text) > 64:  # no instant is this long; the cache keeps only what could be one
        return None
    moment = _rfc3339_timestamp(text)
    return None if moment is None else max(0.0, moment - now)


class Announcement(NamedTuple):
    """One limit a response announced: `limit` per `window_s` seconds of `dimension`
    (`requests`, `tokens`, `input_tokens` or `output_tokens`), `remaining` of it now; `reset_s`
    is how long until the limit is whole again."""

    dimension: str
    limit: int
    remaining: int
    reset_s: float | None
    window_s: float = 60.0


def _int(text: str | None) -> int | None:
    if text is None or len(text) > 18:
        return None
    text = text.strip()
    # str.isdigit alone admits digits int() refuses (`²`, a latin-1 header byte).
    return int(text) if text.isascii() and text.isdigit() else None


def _names(
    prefix: str, parts: tuple[tuple[str, str, float], ...], order: tuple[str, str, str]
) -> tuple[tuple[str, float, str, str, str], ...]:
    """(dimension, window in seconds, limit header, remaining header, reset header) for each
    announced limit: header names spelled out once, not formatted on every response."""
    return tuple(
        (
            dimension,
            window_s,
            prefix + order[0].format(name),
            prefix + order[1].format(name),
            prefix + order[2].format(name),
        )
        for name, dimension, window_s in parts
    )


_X_RATELIMIT = ("limit-{}", "remaining-{}", "reset-{}")
_OPENAI = _names("x-ratelimit-", (("requests", "requests", 60.0), ("tokens", "tokens", 60.0)), _X_RATELIMIT)
# Azure announces its requests per 10 seconds (a 120 RPM deployment says
# `x-ratelimit-limit-requests: 20`), its tokens per minute.
_AZURE = _names("x-ratelimit-", (("requests", "requests", 10.0), ("tokens", "tokens", 60.0)), _X_RATELIMIT)
_ANTHROPIC = _names(
    "anthropic-ratelimit-",
    (
        ("requests", "requests", 60.0),
        ("tokens", "tokens", 60.0),
        ("input-tokens", "input_tokens", 60.0),
        ("output-tokens", "output_tokens", 60.0),
    ),
    ("{}-limit", "{}-remaining", "{}-reset"),
)


def _announcing(headers: Mapping[str, str], prefix: str) -> dict[str, str]:
    """The headers whose (lower-case) names start with `prefix`, in one pass: a response
    carries a dozen or more headers, and looking each limit up by name would scan them all
    every time (httpx decodes every header on each lookup)."""
    raw = getattr(headers, "raw", None)
    if raw is not None:  # httpx: the header bytes as received
        wanted = prefix.encode()
        size = len(wanted)
        return {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in raw
            if name[:size].lower() == wanted
        }
    return {name.lower(): value for name, value in headers.items() if name[: len(prefix)].lower() == prefix}


_CREDENTIALS = (b"authorization", b"x-api-key", b"api-key")


def credential(headers: Mapping[str, str]) -> str | None:
    """The API key a request presents: `authorization` (OpenAI, Azure's Entra tokens),
    `x-api-key` (Anthropic) or `api-key` (Azure), in that order; None without one."""
    raw = getattr(headers, "raw", None)
    if raw is None:
        return headers.get("authorization") or headers.get("x-api-key") or headers.get("api-key")
    found: dict[bytes, bytes] = {}
    for name, value in raw:  # httpx: one pass over the bytes instead of one scan per name
        lowered = name.lower()
        if lowered in _CREDENTIALS and lowered not in found:
            found[lowered] = value
    for name in _CREDENTIALS:
        if found.get(name):
            return found[name].decode("latin-1")
    return None


def announced_limits(provider: str, headers: Mapping[str, str], *, now: float | None = None) -> list[Announcement]:
    """The limits a response of `provider` ("openai", "azure" or "anthropic") announced in its
    headers. A value that is not a count (Azure sometimes sends -1) announces nothing."""
    anthropic = provider == "anthropic"
    seen = _announcing(headers, "anthropic-ratelimit-" if anthropic else "x-ratelimit-")
    found: list[Announcement] = []
    if not seen:
        return found
    names = _ANTHROPIC if anthropic else _AZURE if provider == "azure" else _OPENAI
    for dimension, window_s, limit_name, remaining_name, reset_name in names:
        limit = _int(seen.get(limit_name))
        remaining = _int(seen.get(remaining_name))
        if limit is None or remaining is None:
            continue
        reset = seen.get(reset_name)
        if reset is None:
            reset_s = None
        elif anthropic:
            reset_s = _rfc3339_in_s(reset, time.time() if now is None else now)
        else:
            reset_s = parse_reset_duration(reset)
        found.append(Announcement(dimension, limit, remaining, reset_s, window_s))
    return found
