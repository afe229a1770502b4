"""What each wrapped call cost, for the code that made it: `lt.calls()` collects a `CallReport`
for every LLM call a wrapped client makes inside the block (by the thread that runs it and the
asyncio tasks created in it; a thread started in it, only when run in a copy of its context, as
for `lt.context`).

    with lt.calls() as made:
        client.chat.completions.create(...)
    made[-1].cost_micros, made[-1].attempts, made[-1].latency_s

A report is made once per call, when it is settled (its reply read to the end, abandoned, or
handed to the caller as an error); a stream's report appears when the stream is closed.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["CallReport", "calls", "current_sinks", "report", "reporting_to"]


@dataclass(frozen=True)
class CallReport:
    """One wrapped call, as it ended.

    `outcome` is the ledger's (``ok``, ``rate_limited``, ``error``, ``cancelled``,
    ``cache_hit``, ``unfinished``); tokens are the provider's usage (0 when the call ended
    without any); `cost_micros` is integer micro-dollars: the usage priced (`priced`), an
    ``unfinished`` call's worst case (with its reserved tokens, as the ledger records it), else
    0; `attempts` counts every request sent,
    `waited_s` the seconds spent waiting for the limits or a retry, `latency_s` the whole call,
    `status` the HTTP status of the answer handed back (None for a transport error).
    """

    model: str
    provider: str
    outcome: str
    input_tokens: int
    output_tokens: int
    cost_micros: int
    priced: bool
    attempts: int
    waited_s: float
    latency_s: float
    ttft_s: float | None
    status: int | None


_SINKS: contextvars.ContextVar[tuple[list[CallReport], ...]] = contextvars.ContextVar("llmthrottle_calls", default=())


@contextmanager
def calls() -> Iterator[list[CallReport]]:
    """A list that receives a `CallReport` for every wrapped call settled inside the block;
    nested blocks each receive the calls made inside them. A call made outside every block by
    a client with no guard or cache is left unread (see `lt.wrap`), so no block reports it."""
    made: list[CallReport] = []
    token = _SINKS.set((*_SINKS.get(), made))
    try:
        yield made
    finally:
        _SINKS.reset(token)


def listening() -> bool:
    """Whether a `calls()` block encloses this point (so that a report is worth building)."""
    return bool(_SINKS.get())


def current_sinks() -> tuple[list[CallReport], ...]:
    """The lists of the `calls()` blocks enclosing this point (for `reporting_to`)."""
    return _SINKS.get()


@contextmanager
def reporting_to(sinks: tuple[list[CallReport], ...]) -> Iterator[None]:
    """Reports made inside go to `sinks` (blocks entered elsewhere), not to the blocks here: a
    call settled away from where it was made reports where it was made."""
    token = _SINKS.set(sinks)
    try:
        yield
    finally:
        _SINKS.reset(token)


def report(made: CallReport) -> None:
    for sink in _SINKS.get():
        sink.append(made)
