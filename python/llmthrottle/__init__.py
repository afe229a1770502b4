"""llmthrottle: rate limits, token budgets and cost control for applications that call LLM APIs.

>>> import llmthrottle as lt
>>> lim = lt.Limiter({"requests": "500/min", "tokens": "30k/min", "concurrency": 20})
>>> d = lim.try_acquire("tenant:acme", tokens=1200)
"""

from typing import TYPE_CHECKING, Any

from . import tokens as _tokens
from ._native import (
    BudgetExceeded,
    ConfigError,
    Decision,
    ExceedsCapacity,
    InProcessState,
    InvalidInput,
    InvalidType,
    LlmthrottleError,
    RateLimited,
    Reservation,
    SharedState,
    StateError,
    parse_period,
)
from .budget import Budget
from .limiter import AsyncAcquire, Key, Limiter, LimitState
from .tokens import *  # noqa: F403  (its __all__ is part of ours)

if TYPE_CHECKING:
    from .client import Sidecar, SidecarUnavailable
    from .guard import Guard, GuardedCall, ThresholdEvent
    from .ledger import Ledger, UsageRecord
    from .pricing import Cost, PriceTable, TokenUsage, UsageAccumulator, cost, worst_case_cost
    from .providers import CallReport, RequestTooLarge, ResponseCache, calls, context, wrap
    from .redis_state import RedisState, RedisUnavailable

# Imported on first use: a worker that only limits never pays for asyncio, the sidecar client,
# the ledger's SQLite or the price table.
_LAZY = {
    "Sidecar": ".client",
    "SidecarUnavailable": ".client",
    "Guard": ".guard",
    "GuardedCall": ".guard",
    "ThresholdEvent": ".guard",
    "Ledger": ".ledger",
    "UsageRecord": ".ledger",
    "Cost": ".pricing",
    "PriceTable": ".pricing",
    "TokenUsage": ".pricing",
    "UsageAccumulator": ".pricing",
    "cost": ".pricing",
    "worst_case_cost": ".pricing",
    "wrap": ".providers",
    "context": ".providers",
    "calls": ".providers",
    "CallReport": ".providers",
    "RequestTooLarge": ".providers",
    "ResponseCache": ".providers",
    "RedisState": ".redis_state",
    "RedisUnavailable": ".redis_state",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmthrottle' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [  # noqa: PLE0604  (the tokens module's names are ours too)
    "AsyncAcquire",
    "Budget",
    "BudgetExceeded",
    "CallReport",
    "ConfigError",
    "Cost",
    "Decision",
    "ExceedsCapacity",
    "Guard",
    "GuardedCall",
    "InProcessState",
    "InvalidInput",
    "InvalidType",
    "Key",
    "Ledger",
    "LimitState",
    "Limiter",
    "LlmthrottleError",
    "PriceTable",
    "RateLimited",
    "RedisState",
    "RedisUnavailable",
    "RequestTooLarge",
    "Reservation",
    "ResponseCache",
    "SharedState",
    "Sidecar",
    "SidecarUnavailable",
    "StateError",
    "ThresholdEvent",
    "TokenUsage",
    "UsageAccumulator",
    "UsageRecord",
    "calls",
    "context",
    "cost",
    "parse_period",
    "worst_case_cost",
    "wrap",
    *_tokens.__all__,
]
