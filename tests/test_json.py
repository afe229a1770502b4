"""`llmthrottle._json.loads` reads every document as `json.loads` does: the same value, or the
same error, whatever surrounds it (whitespace, a BOM, extra data, another encoding)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmthrottle._json import loads

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


def _outcome(read: Any, data: Any) -> tuple[str, Any]:
    try:
        return "value", read(data)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return type(error).__name__, str(error)


@settings(max_examples=500, deadline=None)
@given(
    value=_VALUES,
    before=st.sampled_from(["", " ", "\n\t", "\ufeff", "x"]),
    after=st.sampled_from(["", " ", "\r\n", " 1", "}", "garbage"]),
    encoding=st.sampled_from(["str", "utf-8", "utf-16", "utf-8-sig", "bytearray"]),
    cut=st.integers(0, 3),
)
def test_loads_reads_as_json_loads_reads(value: Any, before: str, after: str, encoding: str, cut: int) -> None:
    text = before + json.dumps(value) + after
    text = text[: len(text) - cut] if cut and len(text) > cut else text
    data: Any = (
        text if encoding == "str" else bytearray(text.encode()) if encoding == "bytearray" else text.encode(encoding)
    )
    assert _outcome(loads, data) == _outcome(json.loads, data)


@pytest.mark.parametrize("data", [b"", b"   ", b"\xff{}", b"[" * 100_000, b'{"a": NaN}', b"1e999", b'"\\ud800"'])
def test_odd_documents_read_as_json_loads_reads_them(data: bytes) -> None:
    assert _outcome(loads, data) == _outcome(json.loads, data)
