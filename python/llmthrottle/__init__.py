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
    SharedState,
    StateError,
)
from .budget import Budget
from .client import Sidecar, SidecarUnavailable
from .guard import Guard, GuardedCall, ThresholdEvent
from .ledger import Ledger, UsageRecord
from .limiter import AsyncAcquire, Key, Limiter, LimitState
from .pricing import Cost, PriceTable, TokenUsage, UsageAccumulator, cost, worst_case_cost
from .tokens import *  # noqa: F403  (its __all__ is part of ours)
from . import tokens as _tokens

__all__ = [
    "AsyncAcquire",
    "Budget",
    "BudgetExceeded",
    "ConfigError",
    "Cost",
    "Decision",
    "ExceedsCapacity",
    "Guard",
    "GuardedCall",
    "InProcessState",
    "Key",
    "Ledger",
    "LimitState",
    "Limiter",
    "LlmthrottleError",
    "PriceTable",
    "RateLimited",
    "Reservation",
    "SharedState",
    "Sidecar",
    "SidecarUnavailable",
    "StateError",
    "ThresholdEvent",
    "TokenUsage",
    "UsageAccumulator",
    "UsageRecord",
    "cost",
    "worst_case_cost",
    *_tokens.__all__,
]
