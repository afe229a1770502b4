"""How many of a batch job's calls are in flight: additive increase, multiplicative decrease.

The limits (known or learned) already decide when a call may be sent; this bound keeps the job
from piling calls onto a provider that is slowing down. The bound starts at the job's
`concurrency`, is halved when a call needed more than one attempt (a 429 or an overload got
through) or when calls take more than twice as long as the fastest seen (queueing at the
provider), at most once per round of calls, and grows back by one per round of clean calls.
"""

from __future__ import annotations

import asyncio

__all__ = ["AdaptiveConcurrency"]


class AdaptiveConcurrency:
    """An asyncio bound between 1 and `ceiling` (see the module docstring)."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = ceiling
        self.in_flight = 0
        self._changed = asyncio.Condition()
        self._fastest_s: float | None = None
        self._average_s: float | None = None
        self._clean_in_round = 0
        self._quiet_for = 0  # calls to let by after a decrease before another

    async def acquire(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1

    async def release(self, attempts: int, service_s: float | None) -> None:
        """A call ended after `attempts` attempts, `service_s` seconds of it at the provider
        (None: it failed without an answer to time)."""
        async with self._changed:
            self.in_flight -= 1
            self._observe(attempts, service_s)
            self._changed.notify_all()

    def _observe(self, attempts: int, service_s: float | None) -> None:
        slow = False
        if service_s is not None and service_s > 0:
            self._fastest_s = service_s if self._fastest_s is None else min(self._fastest_s, service_s)
            self._average_s = service_s if self._average_s is None else 0.9 * self._average_s + 0.1 * service_s
            slow = self._average_s > 2 * self._fastest_s + 0.05
        if self._quiet_for > 0:
            self._quiet_for -= 1
            return
        if attempts > 1 or slow:
            self.limit = max(1, self.limit // 2)
            self._quiet_for = self.limit
            self._clean_in_round = 0
            if slow:
                self._average_s = self._fastest_s  # judge the new bound on its own calls
            return
        self._clean_in_round += 1
        if self._clean_in_round >= self.limit and self.limit < self.ceiling:
            self.limit += 1
            self._clean_in_round = 0
