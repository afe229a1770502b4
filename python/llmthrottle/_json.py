"""`loads`: `json.loads` for the hot path of every call (request bodies, replies, stream
events), with the same result and the same errors.

`json.loads` spends most of its time on a small document in Python-level steps around the C
scanner: sniffing the encoding of bytes, a regex over leading and trailing whitespace, two
method calls. On the hot path those steps run with cold caches (between two calls the SDK runs
a millisecond of other code), where they cost more than the scan. The common case (UTF-8, a
value at the first byte, nothing but whitespace after it) goes straight to the scanner; anything
else is handed to `json.loads` itself, so no document is read differently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

__all__ = ["loads"]

# The decoder's C scanner: (text, index) -> (value, end), StopIteration when no value starts there.
_scan = cast(Callable[[str, int], tuple[Any, int]], json.JSONDecoder().scan_once)  # type: ignore[attr-defined]
_WHITESPACE = " \t\n\r"


def loads(data: bytes | bytearray | str) -> Any:
    """The JSON value of `data`, exactly as `json.loads(data)` gives it (or raises)."""
    try:
        text = data if isinstance(data, str) else data.decode()
        value, end = _scan(text, 0)
    except (StopIteration, UnicodeDecodeError, ValueError):
        return json.loads(data)  # leading whitespace, a BOM, UTF-16, malformed: its own answer
    if end != len(text) and text[end:].strip(_WHITESPACE):
        return json.loads(data)  # extra data: raised as json.loads raises it
    return value
