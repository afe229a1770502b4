"""The openai-cookbook parallel processor's throttling, written from its description (not its
code), for the benchmarks to measure beside llmthrottle:

- request and token capacity refill continuously at the configured per-minute limits, up to one
  minute's worth; a request is sent when both have room, its tokens counted as input plus
  max_tokens (as OpenAI counts them);
- the limits it is given are the user's choice; its advice is 50-75% of the provider's, and it
  has no coordination between processes, so several processes must split them;
- after a rate-limit error every request waits 15 seconds; a failed request goes back on a
  retry queue, up to `max_attempts` attempts;
- it polls its capacity every millisecond.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import openai

PAUSE_AFTER_RATE_LIMIT_S = 15.0


async def process(
    requests: Iterator[tuple[Any, dict[str, Any], int]],
    client: openai.AsyncOpenAI,
    *,
    max_requests_per_minute: float,
    max_tokens_per_minute: float,
    on_done: Callable[[Any, Any, float], Awaitable[None] | None],
    on_failed: Callable[[Any, BaseException], None],
    running: Callable[[], bool] = lambda: True,
    max_attempts: int = 5,
) -> None:
    """Sends every `(tag, body, tokens)` of `requests`, calling `on_done(tag, reply, started)`
    or `on_failed(tag, error)` for each; stops early when `running()` turns false."""
    per_s_requests, per_s_tokens = max_requests_per_minute / 60, max_tokens_per_minute / 60
    request_capacity, token_capacity = max_requests_per_minute, max_tokens_per_minute
    last_update, last_rate_limit = time.monotonic(), -1e9
    retries: asyncio.Queue[tuple[Any, dict[str, Any], int, float, int]] = asyncio.Queue()
    in_flight: set[asyncio.Task[None]] = set()
    exhausted = False

    async def attempt(tag: Any, body: dict[str, Any], tokens: int, started: float, left: int) -> None:
        nonlocal last_rate_limit
        try:
            reply = await client.chat.completions.create(**body)
        except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as error:
            if isinstance(error, openai.RateLimitError):
                last_rate_limit = time.monotonic()
            if left > 1:
                retries.put_nowait((tag, body, tokens, started, left - 1))
            else:
                on_failed(tag, error)
            return
        except openai.APIError as error:
            on_failed(tag, error)
            return
        done = on_done(tag, reply, started)
        if done is not None:
            await done

    def refill() -> float:
        nonlocal request_capacity, token_capacity, last_update
        now = time.monotonic()
        request_capacity = min(max_requests_per_minute, request_capacity + per_s_requests * (now - last_update))
        token_capacity = min(max_tokens_per_minute, token_capacity + per_s_tokens * (now - last_update))
        last_update = now
        return now

    while running():
        now = refill()
        if now - last_rate_limit < PAUSE_AFTER_RATE_LIMIT_S:
            await asyncio.sleep(PAUSE_AFTER_RATE_LIMIT_S - (now - last_rate_limit))
            continue
        if retries.empty() and exhausted:
            if not in_flight:
                return
            await asyncio.sleep(0.001)
            continue
        if retries.empty():
            try:
                tag, body, tokens = next(requests)
                started, left = now, max_attempts
            except StopIteration:
                exhausted = True
                continue
        else:
            tag, body, tokens, started, left = retries.get_nowait()
        while request_capacity < 1 or token_capacity < tokens:
            await asyncio.sleep(0.001)
            refill()
        request_capacity -= 1
        token_capacity -= tokens
        task = asyncio.ensure_future(attempt(tag, body, tokens, started, left))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    for task in in_flight:
        task.cancel()
