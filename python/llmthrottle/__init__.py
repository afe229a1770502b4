"""llmthrottle: rate limits, token budgets and cost control for applications that call LLM APIs."""

from ._native import (
    BudgetExceeded,
    ConfigError,
    ExceedsCapacity,
    LlmthrottleError,
    RateLimited,
    StateError,
)
from .tokens import *  # noqa: F403  (its __all__ is part of ours)
from . import tokens as _tokens

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "ExceedsCapacity",
    "LlmthrottleError",
    "RateLimited",
    "StateError",
    *_tokens.__all__,
]
