"""Attribution for the calls made inside a block, by the thread that runs it and the asyncio
tasks created in it (a `contextvars` variable). A thread started inside the block does not
inherit it (Python threads start in an empty context): run its work in a copy of the block's
context, `pool.submit(contextvars.copy_context().run, work)`.

    with lt.context(user="42", team="support", feature="chat"):
        client.chat.completions.create(...)     # keys user:42, team:support, feature:chat
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["context", "context_keys", "context_tags", "tagged"]

_FIELDS: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar("llmthrottle_context", default=())
_TAGS: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar("llmthrottle_tags", default=())


@contextmanager
def context(**fields: str) -> Iterator[None]:
    """Adds `name:value` keys (for limits, budgets and the ledger's columns) to every call a
    wrapped client makes inside the block; nested blocks add to the outer ones."""
    for name, value in fields.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"context {name}= must be a non-empty string, got {value!r}")
    outer = dict(_FIELDS.get())
    token = _FIELDS.set(tuple({**outer, **fields}.items()))
    try:
        yield
    finally:
        _FIELDS.reset(token)


def context_keys() -> list[str]:
    """The keys of the innermost `context` block (none outside one)."""
    return [f"{name}:{value}" for name, value in _FIELDS.get()]


@contextmanager
def tagged(**tags: Any) -> Iterator[None]:
    """Adds ledger tags (not keys) to the calls made inside the block, e.g. the gateway's
    `deployment=` and `route=`."""
    token = _TAGS.set(tuple({**dict(_TAGS.get()), **tags}.items()))
    try:
        yield
    finally:
        _TAGS.reset(token)


def context_tags() -> dict[str, Any]:
    """The tags of the innermost `tagged` block."""
    return dict(_TAGS.get())
