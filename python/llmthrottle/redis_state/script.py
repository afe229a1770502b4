"""The one Lua program (decide.lua) and the calls it answers, built and read without I/O so the
sync and async transports share them.

A call is a list of steps for cells in one slot; each step is `(cell, kind, a, b, c, amount,
extra)` as decide.lua documents. decide.lua is sent two ways (transport.py picks one):
`LIBRARY`, a Redis 7 function library whose helpers are defined once, on the first call after
it is loaded, and `SOURCE`, the same code as a script for EVALSHA, which defines them anew on
every call (2-3 µs more of the server's time per decision on this project's bench VM, and
about 3 µs more p50 from a client, in `benches/bench_redis.py --baseline`). The
library's name carries a digest of the code, so hosts that run different versions of
llmthrottle on one server each call their own; an old version's library stays on the server
(functions persist with its data) until `FUNCTION DELETE llmthrottle_<digest>` removes it.

What the bench measured, and why the code is as it is: an array reply costs redis-py a parse
per element in Python (about 9 µs for 8 numbers), so acquire and peek answer one string;
packing the command cost about 10 µs, so a cached call keeps its packed bytes; in the script,
SET with an expiry (about 1 µs; PXAT instead of PX saved nothing) and TIME (about 0.6 µs) are
the dearest steps, and only the arguments a step uses are converted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

__all__ = ["LIBRARY", "LIBRARY_NAME", "SOURCE", "Step", "Call", "KIND_CODES", "RATE_CODES", "numbers"]

_CODE = resources.files(__package__).joinpath("decide.lua").read_text(encoding="utf-8")

# A script for EVAL/EVALSHA: the helpers, then the call.
SOURCE = _CODE + "\nreturn decide(KEYS, ARGV)\n"

LIBRARY_NAME = "llmthrottle_" + hashlib.sha1(_CODE.encode()).hexdigest()[:16]

# A function library for FCALL. Redis 7.0 runs a library's top level without Lua's standard
# library (no string, no math), so the helpers are made on the function's first call and kept.
LIBRARY = f"""#!lua name={LIBRARY_NAME}
local decide
local function setup()
{_CODE}
return decide
end
redis.register_function('{LIBRARY_NAME}', function(keys, argv)
  if not decide then decide = setup() end
  return decide(keys, argv)
end)
"""

KIND_CODES = {"rate": "r", "whole_rate": "w", "quota": "q", "concurrency": "c"}
# The codes of rate limits (with either refund rule).
RATE_CODES = frozenset({"r", "w"})


class Step(NamedTuple):
    """One cell of a call, with the limit's parameters (see decide.lua)."""

    cell: str
    kind: str  # "r" | "w" | "q" | "c"
    a: int
    b: int
    c: int
    amount: int
    extra: str


class Call:
    """One script invocation: its `keys` and `args`. `packed` keeps the command as the
    transport encoded it, so a call sent again and again (a hot key's) is packed once."""

    __slots__ = ("keys", "args", "packed")

    def __init__(self, keys: list[str], args: list[Any]) -> None:
        self.keys = keys
        self.args = args
        self.packed: Any = None

    def __repr__(self) -> str:
        return f"Call({self.keys!r}, {self.args!r})"


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


def numbers(reply: Any) -> list[int]:
    """An acquire or peek reply (one string, bytes or str as the client decodes it) as its
    numbers: `[1, delay_ns, now_s, now_ns, remaining, reset_ns, mark, ...]` when admitted,
    `[0, retry_ns, step]` when denied."""
    return list(map(int, reply.split()))
