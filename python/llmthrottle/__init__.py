"""llmthrottle: rate limits, token budgets and cost control for applications that call LLM APIs.

>>> import llmthrottle as lt
>>> lim = lt.Limiter({"requests": "500/min", "tokens": "30k/min", "concurrency": 20})
>>> d = lim.try_acquire("tenant:acme", tokens=1200)
"""

from ._native import (
    BudgetExceeded,
    ConfigError,
    Decision,
    ExceedsCapacity,
    InProcessState,
    LlmthrottleError,
    RateLimited,
    Reservation,
    StateError,
)
from .limiter import AsyncAcquire, Key, Limiter, LimitState
from .tokens import *  # noqa: F403  (its __all__ is part of ours)
from . import tokens as _tokens

__all__ = [
    "AsyncAcquire",
    "BudgetExceeded",
    "ConfigError",
    "Decision",
    "ExceedsCapacity",
    "InProcessState",
    "Key",
    "LimitState",
    "Limiter",
    "LlmthrottleError",
    "RateLimited",
    "Reservation",
    "StateError",
    *_tokens.__all__,
]
