"""Which deployment a request goes to: an alias's deployments in their order (priority with
fallback), skipping those whose circuit breaker is open or that a provider 429 cooled down.

A breaker opens after `failures` failures in a row (5xx, timeouts, connection errors), stays
open for `cooldown_s`, then lets one probe through (half-open): a success closes it, a failure
opens it again. A 429 from the provider cools the deployment down for its Retry-After without
counting as a failure.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from .config import Deployment

__all__ = ["Breaker", "Router"]


@dataclass
class Breaker:
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False
    cool_until: float = 0.0
    state_changes: int = 0

    @property
    def state(self) -> str:
        now = time.monotonic()
        if self.open_until > now:
            return "open"
        return "half_open" if self.open_until and self.failures else "closed"


@dataclass
class Router:
    models: dict[str, list[Deployment]]
    failures_to_open: int = 5
    cooldown_s: float = 30.0
    breakers: dict[str, Breaker] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def aliases(self) -> list[str]:
        return list(self.models)

    def candidates(self, alias: str) -> Optional[list[Deployment]]:
        """The deployments to try for `alias`, in order (None: no such alias). Open breakers and
        cooling deployments go last, so a request still has somewhere to go when all are down."""
        deployments = self.models.get(alias)
        if deployments is None:
            return None
        now = time.monotonic()
        ready: list[Deployment] = []
        held: list[Deployment] = []
        with self._lock:
            for deployment in deployments:
                breaker = self.breakers.setdefault(deployment.name, Breaker())
                blocked = breaker.cool_until > now or breaker.open_until > now or breaker.probing
                if not blocked and breaker.open_until:  # half-open: this request is the probe
                    breaker.probing = True
                (held if blocked else ready).append(deployment)
        return ready + held

    def succeeded(self, deployment: Deployment) -> None:
        with self._lock:
            breaker = self.breakers.setdefault(deployment.name, Breaker())
            if breaker.open_until:
                breaker.state_changes += 1
            breaker.failures, breaker.open_until, breaker.probing = 0, 0.0, False

    def failed(self, deployment: Deployment) -> None:
        with self._lock:
            breaker = self.breakers.setdefault(deployment.name, Breaker())
            breaker.failures += 1
            if breaker.probing or breaker.failures >= self.failures_to_open:
                if breaker.open_until <= time.monotonic():
                    breaker.state_changes += 1
                breaker.open_until = time.monotonic() + self.cooldown_s
            breaker.probing = False

    def cool_down(self, deployment: Deployment, seconds: float) -> None:
        with self._lock:
            breaker = self.breakers.setdefault(deployment.name, Breaker())
            breaker.cool_until = max(breaker.cool_until, time.monotonic() + min(seconds, 600.0))
            breaker.probing = False
