"""Where a limit's state for a key lives in Redis, and which cells one script may touch.

A cell is named `<prefix><key part>:<limit digest>`. The key part carries the Redis Cluster hash
tag: a key that has one of its own (`{acme}:user:42`) keeps it, so every key that shares the
tag (`{acme}:team:support`) lands in the same slot and a call over them is one script; any
other key is wrapped whole in braces, so all of one key's limits share a slot. The leading `t`
or `w` tells the two forms apart (the key `a` and the key `{a}` are different cells). The
limit's identity (namespace, layer, pattern, kind, dimension: the engine's label) is hashed to
16 hex digits, so names stay short whatever the pattern.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["cell_name", "check_prefix", "group_by_slot", "group_steps", "marker_name"]

_digests: dict[str, str] = {}
_Item = TypeVar("_Item")


def check_prefix(prefix: str) -> str:
    """A prefix must not carry a hash tag of its own (it would put every cell in one slot)."""
    if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
        raise ValueError(f"prefix must be a str without braces, not {prefix!r}")
    return prefix


def _has_tag(key: str) -> bool:
    start = key.find("{")
    return start >= 0 and key.find("}", start + 2) > start


def cell_name(prefix: str, key: str, label: str) -> str:
    digest = _digests.get(label)
    if digest is None:
        digest = _digests[label] = hashlib.blake2b(label.encode(), digest_size=8).hexdigest()
    part = f"t{key}" if _has_tag(key) else f"w{{{key}}}"
    return f"{prefix}{part}:{digest}"


def marker_name(cell: str, operation: str) -> str:
    """The marker of a replayed operation, in the slot of the cell it updates."""
    return f"{cell}:op:{operation}"


def group_by_slot(items: Iterable[_Item], name: Callable[[_Item], str], cluster: bool) -> list[list[_Item]]:
    """Items whose cells share a slot, one list per slot in slot order (a fixed order, so
    racing calls over the same slots take them in the same order); one list when the server
    is not a cluster."""
    listed = list(items)
    if not cluster or not listed:
        return [listed] if listed else []
    from redis.crc import key_slot

    groups: dict[int, list[_Item]] = {}
    for item in listed:
        groups.setdefault(key_slot(name(item).encode()), []).append(item)
    return [groups[slot] for slot in sorted(groups)]


def group_steps(steps: Iterable[Any], cluster: bool) -> list[list[Any]]:
    """Script steps (anything with a `.cell`) grouped by slot: one script call per group."""
    return group_by_slot(steps, _cell_of, cluster)


def _cell_of(step: Any) -> str:
    return str(step.cell)
