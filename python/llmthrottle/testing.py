"""Helpers for testing code that uses llmthrottle: a clock that moves only when told to.

>>> clock = FakeClock()
>>> lim = Limiter({"requests": "1/s"}, clock=clock)
>>> clock.advance(1.0)
"""

from ._native import FakeClock

__all__ = ["FakeClock"]
