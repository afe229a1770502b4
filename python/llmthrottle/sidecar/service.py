"""What the sidecar does, independent of the wire: one `llmthrottle.Limiter` per namespace, the
reservations admitted and not yet settled, the ledger. Both protocols (binary and HTTP) call
these methods with plain values, so neither re-implements a limiter rule.

Reservations are held by id until committed or cancelled. One not settled within
`reservation_timeout` seconds is committed as reserved (its concurrency slots come back; its
amounts stay charged, since the call probably happened). A client that disconnects leaves its
reservations here until then: the same process may reconnect and settle them, and a call in
flight when the connection dropped still consumed what it reserved.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .._native import ConfigError, LlmthrottleError, Reservation, engine_units
from ..budget import BUDGET_DIMENSION, budget_for
from ..ledger.call import COUNT_FIELDS, KEY_FIELDS, RECORD_COLUMNS, STRING_FIELDS, call_record
from ..ledger.store import MAX_COST_MICROS, MAX_TOKENS
from ..limiter import Limiter
from ..policy import normalize
from .access import Peer
from .config import SidecarConfig
from .errors import ServiceError
from .metrics import Metrics

__all__ = ["Service", "ServiceError"]

_log = logging.getLogger("llmthrottle.sidecar")
_monotonic = time.monotonic
_T = TypeVar("_T")
# Decisions in flight at once on a remote state (each waits for its round trip, not the CPU).
_REMOTE_THREADS = 16

# How many (namespace, key) budget gauges /metrics shows at most.
_BUDGET_KEYS_SHOWN = 10_000

# Ledger fields a commit may carry beside the limiter's dimensions (see Ledger.record).
_LEDGER_MAXIMA = {name: MAX_COST_MICROS if name == "cost_micros" else MAX_TOKENS for name in COUNT_FIELDS}


class _Held:
    """A reservation waiting for commit or cancel."""

    __slots__ = ("reservation", "namespace", "key", "deadline", "admitted_at", "owner", "slots")

    def __init__(
        self,
        reservation: Reservation,
        namespace: str,
        key: Any,
        deadline: float,
        admitted_at: float,
        owner: int | None,
        slots: int,
    ) -> None:
        self.owner = owner
        # Concurrency slots (shared-table leases) it holds, at most: one per key it names.
        self.slots = slots
        self.reservation = reservation
        self.namespace = namespace
        self.key = key
        self.deadline = deadline
        self.admitted_at = admitted_at


class Service:
    """The engine behind the socket. Not thread-safe: the event loop is its only caller."""

    def __init__(self, config: SidecarConfig, *, ledger: Any = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.metrics = metrics or Metrics()
        self.state = _make_state(config)
        # A state decided elsewhere (Redis) costs a network round trip per decision: requests
        # then run on a pool of threads, never on the event loop, so one slow reply holds up
        # no other connection. The lock keeps the reservations' bookkeeping whole; the round
        # trips run outside it, in parallel. Local states decide in the loop, as before.
        self.remote = bool(getattr(self.state, "decides_remotely", False))
        self.executor = (
            ThreadPoolExecutor(max_workers=_REMOTE_THREADS, thread_name_prefix="llmthrottle-state")
            if self.remote
            else None
        )
        self._lock = threading.Lock()
        self.limiters: dict[str, Limiter] = {}
        # Namespaces the policy file defines; they ignore client registrations.
        self.file_namespaces: set[str] = set()
        self.held: dict[str, _Held] = {}
        # Per owner (uid): [unsettled reservations, concurrency slots they hold], bounded by
        # server.max_reservations_per_uid and server.max_slots_per_uid.
        self._per_owner: dict[int | None, list[int]] = {}
        # Ids are 128 random bits no peer can guess (nor repeat across restarts), cut from a
        # pool the kernel refills 256 ids at a time: one getrandom call per 256 reservations.
        self._id_pool = b""
        self._id_at = 0
        self.metrics.held_reservations = lambda: len(self.held)
        if ledger is not None:
            self.metrics.ledger_quarantined = lambda: ledger.quarantine.count
        # Budget keys recently committed to, for the budget-remaining gauge (bounded: least
        # recently used first out).
        self.budget_keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.metrics.budget_remaining = self._budget_remaining
        self.apply_policy(config)

    # ------------------------------------------------------------------ policy

    def apply_policy(self, config: SidecarConfig) -> None:
        """Installs the file's namespaces; existing limiters keep their counters
        (`set_limits`). Client-registered namespaces not in the file are left as they are."""
        for namespace in {**config.namespaces, **config.budgets}:
            rules = config.namespaces.get(namespace)
            budgets = tuple(config.budgets.get(namespace, ()))
            limiter = self.limiters.get(namespace)
            if limiter is None:
                self.limiters[namespace] = Limiter(rules=rules, budgets=budgets, state=self.state, namespace=namespace)
            elif limiter.rules != rules or limiter.budgets != budgets:
                limiter.set_limits(rules=rules, budgets=budgets)
        self.file_namespaces = set(config.namespaces) | set(config.budgets)
        self.config = config
        # Read on every acquire: plain attributes rather than two lookups through config.
        self._max_reservations = config.max_reservations
        self._max_per_uid = config.max_reservations_per_uid
        self._max_slots_per_uid = config.max_slots_per_uid or _quarter_of_the_leases(self.state)
        self._reservation_timeout_s = config.reservation_timeout_s

    def register(self, namespace: Any, limits: Any, rules: Any, *, may_admin: bool) -> dict[str, Any]:
        """A client's limits for `namespace`. The policy file is authoritative for the namespaces
        it defines (the registration is ignored and the file's rules returned); otherwise the
        latest registration wins, keeping counters where limits are unchanged."""
        if not isinstance(namespace, str) or not namespace:
            raise ServiceError("BadRequest", "namespace must be a non-empty string")
        if limits is not None or rules is not None:
            canonical = _as_rules(limits, rules)  # raises ConfigError naming the entry
        if namespace in self.file_namespaces:
            if limits is not None or rules is not None:
                Limiter(rules=canonical)  # still tell the client when its own limits are invalid
        elif limits is not None or rules is not None:
            if not may_admin:
                raise ServiceError("AccessDenied", 'this uid may not define limits ([access] needs "*")')
            limiter = self.limiters.get(namespace)
            if limiter is None:
                self.limiters[namespace] = Limiter(rules=canonical, state=self.state, namespace=namespace)
            elif limiter.rules != canonical:
                _log.warning("namespace %r: limits replaced by a client registration", namespace)
                limiter.set_limits(rules=canonical)
        limiter = self.limiter(namespace)
        return {
            "rules": limiter.rules,
            "dimensions": limiter.dimensions,
            "budgets": [budget.to_wire() for budget in limiter.budgets],
            "source": "file" if namespace in self.file_namespaces else "client",
        }

    def limiter(self, namespace: Any) -> Limiter:
        limiter = self.limiters.get(namespace)
        if limiter is None:
            raise ServiceError(
                "UnknownNamespace",
                f"namespace {namespace!r} is not defined by the policy file and no client registered limits for it",
            )
        return limiter

    # ------------------------------------------------------------------ decisions

    def acquire(
        self, namespace: Any, key: Any, amounts: Any, max_wait: Any, owner: int | None = None
    ) -> tuple[Any, str | None]:
        """The decision and, when admitted, the reservation id to settle it with."""
        limiter = self.limiters.get(namespace)
        if limiter is None:
            self.limiter(namespace)  # raises UnknownNamespace
        if not isinstance(amounts, dict):
            raise ServiceError("BadRequest", "amounts must be a map of dimension to amount")
        decision = limiter.try_acquire(key, max_wait=max_wait, **amounts)  # type: ignore[union-attr]
        with self._lock:
            if not isinstance(decision, Reservation):
                self.metrics.decision(namespace, False, decision.limited_by)
                return decision, None
            self.metrics.decision(namespace, True, None)
            held = self.held
            if len(held) >= self._max_reservations:
                decision.cancel()
                raise ServiceError(
                    "Overloaded",
                    f"{len(held)} reservations are held unsettled (server.max_reservations); commit or cancel them",
                )
            # Concurrency slots are counted only where they are capped (a shared lease table).
            slots = 0
            if self._max_slots_per_uid != _UNCAPPED and "concurrency" in decision.reserved:
                slots = len(key) if isinstance(key, list) else 1
            mine = self._per_owner.get(owner)
            if mine is not None and (mine[0] >= self._max_per_uid or mine[1] + slots > self._max_slots_per_uid):
                decision.cancel()
                self._refuse_owner(mine)
            at = self._id_at
            if at >= len(self._id_pool):
                self._id_pool, at = os.urandom(4096), 0
            self._id_at = at + 16
            reservation_id = self._id_pool[at : at + 16].hex()
            now = _monotonic()
            entry = held[reservation_id] = _Held(
                decision, namespace, key, now + self._reservation_timeout_s, now, owner, slots
            )
            self._hold(entry)
            return decision, reservation_id

    def _refuse_owner(self, mine: list[int]) -> None:
        if mine[0] >= self._max_per_uid:
            raise ServiceError(
                "Overloaded",
                f"this uid holds {mine[0]} reservations unsettled (server.max_reservations_per_uid); "
                "commit or cancel them",
            )
        raise ServiceError(
            "Overloaded",
            f"this uid holds {mine[1]} concurrency slots unsettled (server.max_slots_per_uid); commit or cancel them",
        )

    def commit(self, reservation_id: Any, usage: Any, owner: int | None = None, peer: Peer | None = None) -> None:
        """Reconciles with real usage. Usage names the limiter's dimensions, plus optional
        ledger fields (model, provider, tenant, user, team, feature, cost_micros, token kinds);
        every commit is recorded in the ledger when one is configured. Only the `owner` (uid)
        that acquired a reservation may settle it, and a `peer` restricted by `[access]` may
        name only ledger columns it could use as keys (`team="a"` needs key `team:a`)."""
        if not isinstance(usage, dict):
            raise ServiceError("BadRequest", "usage must be a map")
        if peer is not None and peer.may_use is not None:
            for name in KEY_FIELDS:
                value = usage.get(name)
                if value is not None and peer.check_key(f"{name}:{value}") is not None:
                    raise ServiceError("AccessDenied", f"uid {peer.uid} may not record {name}={value!r:.100}")
        for name in COUNT_FIELDS:
            value = usage.get(name)
            if value is not None and (type(value) is not int or not 0 <= value <= _LEDGER_MAXIMA[name]):
                raise ServiceError("BadRequest", f"usage.{name} must be an integer in [0, {_LEDGER_MAXIMA[name]}]")
        held = self._take(reservation_id, owner)
        dimensions = self.limiters[held.namespace].dimensions
        amounts = {k: v for k, v in usage.items() if k in dimensions}
        try:
            if len(amounts) < len(usage):
                unknown = [k for k in usage if k not in dimensions and k not in RECORD_COLUMNS]
                if unknown:
                    raise ValueError(
                        f"unknown dimension {unknown[0]!r}: this limiter limits "
                        f"{', '.join(map(repr, dimensions))} (ledger fields: "
                        f"{', '.join(sorted(RECORD_COLUMNS))})"
                    )
            held.reservation.commit(**amounts)
        finally:
            with self._lock:
                if not held.reservation.settled:
                    self.held[reservation_id] = held  # a bad amount: the caller may commit again
                    self._hold(held)
                else:
                    # Settled, even when it raised because some usage found no room to be charged
                    # (a full shared table): the call happened, so it is counted and recorded.
                    self.metrics.settle(held.namespace, "committed", amounts or dict(held.reservation.reserved))
                    self._note_budget_keys(held.namespace, held.key)
            if held.reservation.settled and self.ledger is not None:
                self._record(held, usage, amounts, "ok")

    def _note_budget_keys(self, namespace: str, keys: Any) -> None:
        budgets = self.limiters[namespace].budgets
        if not budgets:
            return
        for key in [keys] if isinstance(keys, str) else keys:
            if budget_for(budgets, key) is not None:
                self.budget_keys[(namespace, key)] = None
                self.budget_keys.move_to_end((namespace, key))
        while len(self.budget_keys) > _BUDGET_KEYS_SHOWN:
            self.budget_keys.popitem(last=False)

    def _budget_remaining(self) -> Iterable[tuple[str, str, str, float]]:
        for namespace, key in list(self.budget_keys):
            limiter = self.limiters.get(namespace)
            budget = budget_for(limiter.budgets, key) if limiter is not None else None
            if limiter is None or budget is None:
                continue
            for state in limiter.status(key):
                if state.dimension == BUDGET_DIMENSION:
                    yield namespace, budget.label, key, float(state.remaining)

    def cancel(self, reservation_id: Any, owner: int | None = None) -> None:
        held = self._take(reservation_id, owner)
        held.reservation.cancel()
        with self._lock:
            self.metrics.settle(held.namespace, "cancelled", {})
        if self.ledger is not None:
            self._record(held, {}, {}, "cancelled")  # refunded: recorded at $0

    def _take(self, reservation_id: Any, owner: int | None) -> _Held:
        with self._lock:
            held = self.held.get(reservation_id) if isinstance(reservation_id, str) else None
            if held is not None and held.owner == owner:
                del self.held[reservation_id]
                self._released(held)
            else:
                # Another uid's reservation is answered as if it did not exist.
                held = None
        if held is None:
            raise ServiceError(
                "UnknownReservation",
                f"reservation {reservation_id!r} is unknown: already "
                "settled, expired (server.reservation_timeout), or from a previous server",
            )
        return held

    def _hold(self, held: _Held) -> None:
        counts = self._per_owner.get(held.owner)
        if counts is None:
            self._per_owner[held.owner] = [1, held.slots]
        else:
            counts[0] += 1
            counts[1] += held.slots

    def _released(self, held: _Held) -> None:
        counts = self._per_owner[held.owner]
        counts[0] -= 1
        counts[1] -= held.slots
        if counts[0] <= 0:
            del self._per_owner[held.owner]

    def expire(self, now: float | None = None, limit: int | None = None) -> int:
        """Commits as reserved the reservations past their deadline, at most `limit` of them
        (so that a mass expiry is spread over several turns of the event loop); returns how
        many. `held` is in admission order and every deadline is admission + the same timeout,
        so the expired ones are a prefix."""
        now = time.monotonic() if now is None else now
        expired: list[tuple[str, _Held]] = []
        with self._lock:
            for reservation_id, held in self.held.items():
                if held.deadline > now or (limit is not None and len(expired) >= limit):
                    break
                expired.append((reservation_id, held))
            for reservation_id, held in expired:
                del self.held[reservation_id]
                self._released(held)
        for reservation_id, held in expired:
            try:
                held.reservation.commit()
            except Exception:
                _log.exception("expiring reservation %s failed", reservation_id)
                if not held.reservation.settled:
                    continue
            with self._lock:
                self.metrics.settle(held.namespace, "expired", dict(held.reservation.reserved))
            if self.ledger is not None:
                self._record(held, {}, {}, "expired")
        if expired:
            _log.info(
                "committed %d reservations not settled within %gs", len(expired), self.config.reservation_timeout_s
            )
        return len(expired)

    def status(self, namespace: Any, key: Any) -> list[list[Any]]:
        if not isinstance(key, str):
            raise ServiceError("BadRequest", "status takes one key (a string)")
        return [list(entry) for entry in self.limiter(namespace).status(key)]

    def peek(self, namespace: Any, key: Any, amounts: Any) -> Any:
        if not isinstance(amounts, dict):
            raise ServiceError("BadRequest", "amounts must be a map of dimension to amount")
        return self.limiter(namespace).peek(key, **amounts)

    # ------------------------------------------------------------------ ledger

    def _record(self, held: _Held, usage: dict[str, Any], amounts: dict[str, Any], outcome: str) -> None:
        given: dict[str, Any] = {}
        if not RECORD_COLUMNS.isdisjoint(usage):  # usage is often dimensions alone
            given = {name: value for name in STRING_FIELDS if isinstance(value := usage.get(name), str) and value}
            given.update((name, value) for name in COUNT_FIELDS if type(value := usage.get(name)) is int and value >= 0)
        tags: dict[str, Any] = {name: given.pop(name) for name in KEY_FIELDS if name in given}
        tags["namespace"] = held.namespace
        reserved = dict(held.reservation.reserved)
        if amounts or reserved:
            tags["usage"] = {**reserved, **amounts}
        try:  # a dollars dimension, when the caller limits one: micro-dollars as the engine took it
            unpriced = engine_units("cost_usd", amounts.get("cost_usd", 0))
        except (LlmthrottleError, TypeError):
            unpriced = 0
        keys = [held.key] if isinstance(held.key, str) else list(held.key)
        record = call_record(
            keys,
            outcome=given.get("outcome", outcome),
            latency_s=max(0.0, time.monotonic() - held.admitted_at),
            tags=tags,
            model=given.get("model"),
            provider=given.get("provider"),
            cost_micros=given.get("cost_micros"),
            tokens=given,
            unpriced_micros=unpriced,
        )
        try:
            self.ledger.record(**record)
        except Exception:
            _log.exception("ledger record failed for namespace %r key %r", held.namespace, held.key)

    async def run(self, method: Callable[..., _T], *args: Any) -> _T:
        """`method(*args)`: in the event loop for a local state, on the state's threads for a
        remote one."""
        if self.executor is None:
            return method(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, method, *args)

    def close(self) -> None:
        """Flushes the ledger (reservations stay where they are: in-process state dies with
        the process, shared-memory counters persist and release concurrency of dead holders)."""
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        if self.ledger is not None:
            self.ledger.close()


def _as_rules(limits: Any, rules: Any) -> dict[str, Any]:
    """The registration as a rules mapping, validated by the engine's own normalisation."""
    normalize(limits, rules)  # raises ConfigError naming the offending entry
    if rules is not None:
        return dict(rules)
    return {"*": dict(limits)}


_UNCAPPED = float("inf")


def _quarter_of_the_leases(state: Any) -> float:
    """The default cap on one uid's concurrency slots: a quarter of the shared table's leases.
    A state without a fixed lease table (in process, Redis) has none to starve: no cap."""
    stats = getattr(state, "stats", None)
    leases = stats().get("lease_capacity") if callable(stats) else None
    return max(1, leases // 4) if isinstance(leases, int) else _UNCAPPED


def _make_state(config: SidecarConfig) -> Any:
    if config.state_kind == "in-process":
        from .._native import InProcessState

        return InProcessState()
    if config.state_kind == "redis":
        from ..redis_state import RedisState

        return RedisState(config.state_url, **config.state_redis_options)
    import llmthrottle

    shared = getattr(llmthrottle, "SharedState", None)
    if shared is None:
        raise ConfigError(
            'state.kind = "shared" needs llmthrottle.SharedState, which this build '
            'does not have; use kind = "in-process"'
        )
    from .config import default_state_name

    return shared(
        config.state_name or default_state_name(config.socket),
        capacity=config.state_capacity,
        lease_capacity=config.state_lease_capacity,
    )
