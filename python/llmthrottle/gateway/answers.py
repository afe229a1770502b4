"""The answers the gateway makes itself, each in the caller's provider shape: errors, denials
(a 429 with Retry-After and the limits as the provider would announce them), an upstream's
failure passed on, and the overhead header every answer carries."""

from __future__ import annotations

import math
import time
from typing import Any

from aiohttp import web

from .._native import BudgetExceeded
from ..providers.headers import format_reset_duration, rfc3339_in
from ..providers.protocol import Family, error_body

__all__ = ["denied", "error", "from_upstream", "limit_headers", "overhead_ms"]


def error(family: Family, status: int, message: str) -> web.Response:
    """An error of the gateway's own, as `family`'s API writes one."""
    return web.json_response(error_body(family, status, message), status=status)


def from_upstream(status: int, headers: dict[str, str], data: bytes) -> web.Response:
    """The last deployment's failure, passed on (its body, already in the caller's shape, and
    the headers an SDK reads)."""
    kept = {
        k: v for k, v in headers.items() if k.lower().startswith(("retry-after", "x-ratelimit", "anthropic-ratelimit"))
    }
    return web.Response(status=status, body=data, headers={**kept, "content-type": "application/json"})


def denied(family: Family, refusal: Exception, tenant: str, headers: dict[str, str]) -> web.Response:
    """The 429 of a tier limit (`RateLimited`) or a budget (`BudgetExceeded`, code
    `insufficient_quota`), with `headers` (the caller's limits, see `limit_headers`) and the
    refusal's Retry-After."""
    retry = getattr(refusal, "retry_after", None)
    retry_s = retry if isinstance(retry, (int, float)) and math.isfinite(retry) else None
    kind = "budget" if isinstance(refusal, BudgetExceeded) else getattr(refusal, "limited_by", None) or "requests"
    message = (
        f"budget exhausted for {getattr(refusal, 'key', None) or tenant}"
        if kind == "budget"
        else f"rate limit reached for {kind} on this key; retry after {retry_s or 0:.2f}s"
    )
    if retry_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_s)))
        headers["retry-after-ms"] = str(max(1, math.ceil(retry_s * 1000)))
    body = error_body(
        family,
        429,
        message,
        kind="insufficient_quota" if kind == "budget" and family == "openai" else None,
        code="insufficient_quota" if kind == "budget" else None,
    )
    return web.json_response(body, status=429, headers=headers)


def limit_headers(family: Family, limiter: Any, key: str) -> dict[str, str]:
    """`key`'s rate limits on `limiter` as the provider would announce them."""
    headers: dict[str, str] = {}
    for limit in limiter.status(key):
        if limit.kind != "rate" or limit.dimension not in ("requests", "tokens"):
            continue
        capacity, remaining = int(limit.capacity), max(0, int(limit.remaining))
        if family == "openai":
            headers[f"x-ratelimit-limit-{limit.dimension}"] = str(capacity)
            headers[f"x-ratelimit-remaining-{limit.dimension}"] = str(remaining)
            headers[f"x-ratelimit-reset-{limit.dimension}"] = format_reset_duration(limit.reset_after)
        else:
            headers[f"anthropic-ratelimit-{limit.dimension}-limit"] = str(capacity)
            headers[f"anthropic-ratelimit-{limit.dimension}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{limit.dimension}-reset"] = rfc3339_in(limit.reset_after)
    return headers


def overhead_ms(received: float, sent: float, answered: float) -> str:
    """The gateway's own time: before the request left, and since the answer came back."""
    return f"{((sent - received) + (time.perf_counter() - answered)) * 1000:.3f}"
