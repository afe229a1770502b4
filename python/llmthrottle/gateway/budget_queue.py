"""Requests held at a budget's end: a budget with `on_exceed = "queue"` makes the gateway keep a
request it has no room for, instead of answering 429, until the budget has room again.

The hold is bounded twice. In time: a request waits at most `budget_queue_timeout` seconds (per
alias, or the `[gateway]` default; 0, the default, answers 429 at once), and when the budget
will not have room within what is left of that (a calendar budget until its next period, say),
it is answered 429 at once rather than held for nothing. In number: at most `budget_queue_max`
requests are held by a worker at a time; past that a request is answered 429 at once, so that a
flood cannot hold unbounded memory. Only budgets are waited for: a tier's rate limit still
answers 429 at once (its Retry-After tells the SDK when to come back).

A held request asks again when the budget said it would have room (`retry_after`); several held
requests may ask at the same moment and only those that fit are admitted, the others wait again.
A request whose caller went away stops waiting within a second.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from .._native import BudgetExceeded

__all__ = ["BudgetQueue", "Hold"]

# Longest single sleep of a held request, so that one whose caller left is let go soon.
_CHECK_S = 1.0
# Shortest, so that a budget that reports room "now" but refuses again is not asked in a loop.
_MIN_WAIT_S = 0.005


class BudgetQueue:
    """The requests one worker holds for their budgets (see the module docstring)."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self.waiting = 0
        self.held_total = 0  # requests ever held, for /metrics
        self.full_total = 0  # requests refused because max_waiting were held

    def hold(self, timeout_s: float, gone: Callable[[], bool]) -> Hold:
        """The hold of one request that may wait `timeout_s` in all; `gone()` tells whether its
        caller went away."""
        return Hold(self, timeout_s, gone)


class Hold:
    """One request's place in the queue, taken at its first denial and kept until it is
    admitted or answered; a context manager that gives the place back."""

    def __init__(self, queue: BudgetQueue, timeout_s: float, gone: Callable[[], bool]) -> None:
        self._queue = queue
        self._timeout_s = timeout_s
        self._gone = gone
        self._deadline: float | None = None

    async def wait(self, denied: BudgetExceeded) -> bool:
        """Waits until the budget that refused the request should have room; False (without
        waiting) when the request must be answered 429 now: a budget that does not queue, no
        time left for it, or no place in the queue."""
        budget = getattr(denied, "budget", None)
        retry_after = getattr(denied, "retry_after", None)
        if budget is None or budget.on_exceed != "queue" or self._timeout_s <= 0:
            return False
        if not isinstance(retry_after, (int, float)) or not math.isfinite(retry_after):
            return False
        now = time.monotonic()
        deadline = self._deadline if self._deadline is not None else now + self._timeout_s
        if retry_after > deadline - now:
            return False  # no room within the time left: waiting would only delay the 429
        if self._deadline is None:
            if self._queue.waiting >= self._queue.max_waiting:
                self._queue.full_total += 1
                return False
            self._queue.waiting += 1
            self._queue.held_total += 1
            self._deadline = deadline
        until = now + max(retry_after, _MIN_WAIT_S)
        while (left := until - time.monotonic()) > 0:
            if self._gone():
                return False
            await asyncio.sleep(min(left, _CHECK_S))
        return not self._gone()

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._deadline is not None:
            self._queue.waiting -= 1
            self._deadline = None
