"""What the provider-layer tests share beside their fixtures (in conftest.py)."""

from __future__ import annotations

from typing import Any


def records(ledger: Any) -> list[Any]:
    ledger.flush()
    return list(ledger.records())
