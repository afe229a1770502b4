"""Helpers for testing code that uses llmthrottle: a clock that moves only when told to, and a
fake LLM provider that speaks the OpenAI and Anthropic APIs with their rate-limit semantics.

>>> clock = FakeClock()
>>> lim = Limiter({"requests": "1/s"}, clock=clock)
>>> clock.advance(1.0)

>>> with FakeProvider(rpm=60, tpm=10_000) as provider:
...     client = openai.OpenAI(base_url=provider.openai_base_url, api_key="test")
"""

from __future__ import annotations

from typing import Any

from .._native import FakeClock

__all__ = ["FakeClock", "FakeProvider"]


def __getattr__(name: str) -> Any:
    if name == "FakeProvider":  # imported on use: it needs aiohttp
        from .fake_provider import FakeProvider

        return FakeProvider
    raise AttributeError(f"module 'llmthrottle.testing' has no attribute {name!r}")
