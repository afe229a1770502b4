"""Limiter state in Redis: the same limits and budgets across hosts (see `RedisState`).

Needs the `redis` package (`pip install 'llmthrottle[redis]'`)."""

from .limiter import LeasedReservation, RedisDecision, RedisLimiter, RedisReservation
from .state import RedisState, RedisUnavailable

__all__ = ["LeasedReservation", "RedisDecision", "RedisLimiter", "RedisReservation", "RedisState", "RedisUnavailable"]
