"""Which deployment a request goes to, and in which order the others are tried after it.

An alias's `strategy` orders its deployments: `priority` (as listed, the default), `weighted`
(a random order drawn by `weight`), `least_cost` (cheapest first, from the price table, for a
call of 1,000 input and 1,000 output tokens) or `lowest_latency` (by a moving average of each
deployment's recent answers, untried ones first). Deployments whose circuit breaker is open or
that a provider 429 cooled down go last.

A breaker opens after `failures` failures in a row (5xx, timeouts, connection errors), stays
open for `cooldown_s`, then lets one probe through (half-open): a success closes it, a failure
opens it again. A 429 from the provider cools the deployment down for its Retry-After without
counting as a failure.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from .config import Deployment

__all__ = ["Breaker", "Router"]


@dataclass
class Breaker:
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False
    cool_until: float = 0.0
    state_changes: int = 0
    latency_s: float | None = None  # moving average of successful answers

    @property
    def state(self) -> str:
        now = time.monotonic()
        if self.open_until > now:
            return "open"
        return "half_open" if self.open_until and self.failures else "closed"


_LATENCY_WEIGHT = 0.2  # of the newest answer in the moving average


@dataclass
class Router:
    models: dict[str, list[Deployment]]
    failures_to_open: int = 5
    cooldown_s: float = 30.0
    strategies: dict[str, str] = field(default_factory=dict)
    breakers: dict[str, Breaker] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _random: random.Random = field(default_factory=random.Random)
    _costs: dict[str, float] = field(default_factory=dict)

    def aliases(self) -> list[str]:
        return list(self.models)

    def candidates(self, alias: str) -> list[Deployment] | None:
        """The deployments to try for `alias`, in order (None: no such alias). Open breakers and
        cooling deployments go last, so a request still has somewhere to go when all are down."""
        deployments = self.models.get(alias)
        if deployments is None:
            return None
        deployments = self._ordered(alias, deployments)
        now = time.monotonic()
        ready: list[Deployment] = []
        held: list[Deployment] = []
        with self._lock:
            for deployment in deployments:
                breaker = self._breaker(deployment)
                blocked = breaker.cool_until > now or breaker.open_until > now or breaker.probing
                if not blocked and breaker.open_until:  # half-open: this request is the probe
                    breaker.probing = True
                (held if blocked else ready).append(deployment)
        return ready + held

    def _breaker(self, deployment: Deployment) -> Breaker:
        """`deployment`'s breaker, made at its first use (once: not a new one per request)."""
        breaker = self.breakers.get(deployment.name)
        if breaker is None:
            breaker = self.breakers[deployment.name] = Breaker()
        return breaker

    def _ordered(self, alias: str, deployments: list[Deployment]) -> list[Deployment]:
        strategy = self.strategies.get(alias, "priority")
        if strategy == "weighted":
            # Weighted sampling without replacement: key each by U^(1/weight), largest first.
            keyed = [(self._random.random() ** (1.0 / d.weight), d) for d in deployments]
            return [d for _, d in sorted(keyed, key=lambda pair: pair[0], reverse=True)]
        if strategy == "least_cost":
            return sorted(deployments, key=self._cost)
        if strategy == "lowest_latency":

            def latency(deployment: Deployment) -> float:
                breaker = self.breakers.get(deployment.name)
                return -1.0 if breaker is None or breaker.latency_s is None else breaker.latency_s

            return sorted(deployments, key=latency)
        return deployments

    def _cost(self, deployment: Deployment) -> float:
        """Micro-dollars of a call of 1,000 input and 1,000 output tokens (unknown: last)."""
        cost = self._costs.get(deployment.name)
        if cost is None:
            from .._native import ConfigError
            from ..pricing import PriceTable, TokenUsage

            try:
                cost = float(
                    PriceTable.default()
                    .cost(deployment.model, TokenUsage(input_tokens=1000, output_tokens=1000), deployment.provider)
                    .total_micros
                )
            except (ConfigError, ValueError):
                cost = float("inf")
            self._costs[deployment.name] = cost
        return cost

    def succeeded(self, deployment: Deployment, latency_s: float | None = None) -> None:
        with self._lock:
            breaker = self._breaker(deployment)
            if latency_s is not None:
                breaker.latency_s = (
                    latency_s
                    if breaker.latency_s is None
                    else (breaker.latency_s + _LATENCY_WEIGHT * (latency_s - breaker.latency_s))
                )
            if breaker.open_until:
                breaker.state_changes += 1
            breaker.failures, breaker.open_until, breaker.probing = 0, 0.0, False

    def failed(self, deployment: Deployment) -> None:
        with self._lock:
            breaker = self._breaker(deployment)
            breaker.failures += 1
            if breaker.probing or breaker.failures >= self.failures_to_open:
                if breaker.open_until <= time.monotonic():
                    breaker.state_changes += 1
                breaker.open_until = time.monotonic() + self.cooldown_s
            breaker.probing = False

    def cool_down(self, deployment: Deployment, seconds: float) -> None:
        with self._lock:
            breaker = self._breaker(deployment)
            breaker.cool_until = max(breaker.cool_until, time.monotonic() + min(seconds, 600.0))
            breaker.probing = False
