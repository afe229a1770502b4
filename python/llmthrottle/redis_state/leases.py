"""Leases: slices of a rate limit taken from Redis and spent in this process, so a hot key's
decisions stay local.

A lease is an ordinary admission of `size` units, charged in Redis when it is taken; decisions
then draw on it here until it is spent or `lease_ttl` passes, and what is left then goes back
with the limit's refund (by default only the part that has not drained yet; whole for a limit
whose refunds come back whole). So leases can only under-use a limit, never over-admit: at any
moment the units charged in Redis but not yet used are at
most the slices held, each at most `lease_fraction` of the burst, by every process that holds
one. A slice is sized by demand: the first is the request's own amount, each slice spent before
its time is twice the last, each returned with units left is half, within [amount, cap].
Only requests whose every limit is a rate take leases (a concurrency slot or a calendar quota is
decided in Redis each time), and only when they do not wait (`max_wait=0`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .script import Step

__all__ = ["Lease", "LeaseBook"]


@dataclass
class Lease:
    """Units of one cell charged in Redis and not yet used here."""

    cell: str
    step: Step  # the limit's parameters (amount = the slice's size)
    mark: str  # the slice's charge end, for the refund of what is left
    left: int
    expires_at: float

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


class LeaseBook:
    """This process's leases, by cell, and the size the next slice of each cell should take."""

    def __init__(self, fraction: float, ttl: float) -> None:
        self.fraction = fraction
        self.ttl = ttl
        self.lock = threading.Lock()
        self.leases: dict[str, Lease] = {}
        self._sizes: dict[str, int] = {}
        self.local_decisions = 0
        self.stats = {"slices_taken": 0, "units_leased": 0, "units_returned": 0}

    def cap(self, step: Step) -> int:
        """The largest slice of this limit: `fraction` of its burst (at least 1)."""
        return max(1, int(step.c * self.fraction))

    def size_for(self, step: Step, amount: int) -> int:
        cap = self.cap(step)
        return min(cap, max(amount, self._sizes.get(step.cell, amount)))

    def take_local(self, steps: list[Step], now: float) -> list[Lease] | None:
        """Draws every step's amount from its lease, all or nothing (under `lock`); None when
        a lease is missing, expired or short."""
        leases = self.leases
        if len(steps) == 1:  # the common case, kept short: it is every local decision
            step = steps[0]
            lease = leases.get(step.cell)
            if lease is None or lease.left < step.amount or now >= lease.expires_at:
                return None
            lease.left -= step.amount
            self.local_decisions += 1
            return [lease]
        taken = []
        for step in steps:
            lease = leases.get(step.cell)
            if lease is None or lease.left < step.amount or now >= lease.expires_at:
                return None
            taken.append(lease)
        for lease, step in zip(taken, steps):
            lease.left -= step.amount
        self.local_decisions += 1
        return taken

    def replace(self, lease: Lease) -> Lease | None:
        """Installs a new slice; returns the one it replaces (to be given back), and adapts the
        next slice's size to how this one's predecessor was used."""
        old = self.leases.get(lease.cell)
        self.leases[lease.cell] = lease
        self.stats["slices_taken"] += 1
        self.stats["units_leased"] += lease.step.amount
        cap = self.cap(lease.step)
        if old is not None:
            spent_early = old.left < lease.step.amount and not old.expired(time.monotonic())
            size = old.step.amount * 2 if spent_early else max(1, old.step.amount // 2) if old.left else old.step.amount
            self._sizes[lease.cell] = min(cap, size)
        else:
            self._sizes[lease.cell] = min(cap, lease.step.amount * 2)
        return old

    def drain(self) -> list[Lease]:
        """Every lease, removed (to give back what is left)."""
        leases = list(self.leases.values())
        self.leases.clear()
        return leases

    def expired(self, now: float) -> list[Lease]:
        """The leases whose time is up, removed."""
        out = [lease for lease in self.leases.values() if lease.expired(now)]
        for lease in out:
            del self.leases[lease.cell]
        return out
