"""The one Lua script (decide.lua) and the calls it answers, built and read without I/O so the
sync and async transports share them.

A call is a list of steps for cells in one slot; each step is `(cell, kind, a, b, c, amount,
extra)` as decide.lua documents. The script is loaded once per server and called by its SHA;
redis-py's `Script` loads it again when a server answers NOSCRIPT (after a restart or
SCRIPT FLUSH).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

__all__ = ["SOURCE", "Step", "Call", "KIND_CODES"]

SOURCE = resources.files(__package__).joinpath("decide.lua").read_text(encoding="utf-8")

KIND_CODES = {"rate": "r", "quota": "q", "concurrency": "c"}


class Step(NamedTuple):
    """One cell of a call, with the limit's parameters (see decide.lua)."""

    cell: str
    kind: str  # "r" | "q" | "c"
    a: int
    b: int
    c: int
    amount: int
    extra: str


class Call(NamedTuple):
    """One script invocation: `keys` and `args` for EVALSHA."""

    keys: list[str]
    args: list[Any]


def build(
    mode: str,
    steps: Sequence[Step],
    *,
    now: str = "",
    max_wait_ns: int = 0,
    holder: str = "",
    holder_ttl_ms: int = 0,
    marker: str | None = None,
    operation: str = "",
) -> Call:
    keys = [step.cell for step in steps]
    args: list[Any] = [mode, operation, now, max_wait_ns, holder, holder_ttl_ms]
    for step in steps:
        args += (step.kind, step.a, step.b, step.c, step.amount, step.extra)
    if operation:
        assert marker is not None
        keys.append(marker)
    return Call(keys, args)
