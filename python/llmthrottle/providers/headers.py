"""What providers say in their response headers: how long to wait before retrying, and the
limits they announce. One parser per format, shared by every way in (wrap, gateway, batch)."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "Announcement",
    "announced_limits",
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


def parse_reset_duration(text: str) -> float | None:
    """An `x-ratelimit-reset-*` value in seconds: OpenAI's durations (`6m0s`, `1.5s`, `20ms`,
    `1h2m3s`) or Azure's plain seconds (`45`); None if malformed."""
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


def _rfc3339_in_s(text: str, now: float) -> float | None:
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0.0, moment.timestamp() - now)


@dataclass(frozen=True)
class Announcement:
    """One limit a response announced: `limit` per `window_s` seconds of `dimension`
    (`requests`, `tokens`, `input_tokens` or `output_tokens`), `remaining` of it now; `reset_s`
    is how long until the limit is whole again."""

    dimension: str
    limit: int
    remaining: int
    reset_s: float | None
    window_s: float = 60.0


def _int(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit() or len(text) > 18:
        return None
    return int(text)


# (header name, dimension, window in seconds). Azure announces its requests per 10 seconds
# (a 120 RPM deployment says `x-ratelimit-limit-requests: 20`), its tokens per minute.
_OPENAI = (("requests", "requests", 60.0), ("tokens", "tokens", 60.0))
_AZURE = (("requests", "requests", 10.0), ("tokens", "tokens", 60.0))
_ANTHROPIC = (
    ("requests", "requests"),
    ("tokens", "tokens"),
    ("input-tokens", "input_tokens"),
    ("output-tokens", "output_tokens"),
)


def announced_limits(provider: str, headers: Mapping[str, str], *, now: float | None = None) -> list[Announcement]:
    """The limits a response of `provider` ("openai", "azure" or "anthropic") announced in its
    headers. A value that is not a count (Azure sometimes sends -1) announces nothing."""
    now = time.time() if now is None else now
    found = []
    if provider == "anthropic":
        for name, dimension in _ANTHROPIC:
            limit = _int(headers.get(f"anthropic-ratelimit-{name}-limit"))
            remaining = _int(headers.get(f"anthropic-ratelimit-{name}-remaining"))
            reset = headers.get(f"anthropic-ratelimit-{name}-reset")
            if limit is not None and remaining is not None:
                found.append(
                    Announcement(dimension, limit, remaining, None if reset is None else _rfc3339_in_s(reset, now))
                )
    else:
        for name, dimension, window_s in _AZURE if provider == "azure" else _OPENAI:
            limit = _int(headers.get(f"x-ratelimit-limit-{name}"))
            remaining = _int(headers.get(f"x-ratelimit-remaining-{name}"))
            reset = headers.get(f"x-ratelimit-reset-{name}")
            if limit is not None and remaining is not None:
                found.append(
                    Announcement(
                        dimension,
                        limit,
                        remaining,
                        None if reset is None else parse_reset_duration(reset),
                        window_s,
                    )
                )
    return found
