"""A write-ahead hook for the code that makes wrapped calls: inside `before_each_send(callback)`,
`callback(attempt)` runs right before each request a wrapped call sends (attempt 1, 2, ... of
that call), after the request was admitted and just before its bytes leave. Whatever the
callback makes durable is then known to have happened before the provider could bill the
request; an exception from the callback stops the request from being sent (the call fails
with it). The batch runner writes its intent lines here (see batch/intents.py).

Like `lt.calls()` and `lt.context`, the block covers the calls made in it by the thread that
runs it and the asyncio tasks created in it (a `contextvars` variable; a thread started in it,
only when run in a copy of its context); nested blocks each hear.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["before_each_send", "announce_send"]

_HOOKS: contextvars.ContextVar[tuple[Callable[[int], None], ...]] = contextvars.ContextVar(
    "llmthrottle_before_send", default=()
)


@contextmanager
def before_each_send(callback: Callable[[int], None]) -> Iterator[None]:
    """Calls `callback(attempt)` before each request a wrapped call inside the block sends."""
    token = _HOOKS.set((*_HOOKS.get(), callback))
    try:
        yield
    finally:
        _HOOKS.reset(token)


def announce_send(attempt: int) -> None:
    """Tells the enclosing `before_each_send` blocks that attempt `attempt` is about to leave."""
    for callback in _HOOKS.get():
        callback(attempt)
