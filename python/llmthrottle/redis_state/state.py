"""`RedisState`: limiter state in Redis (standalone or Cluster), shared by every host.

    lim = lt.Limiter({"requests": "500/min"}, state=lt.RedisState("redis://cache:6379/0"))

Every decision is one call of decide.lua (one round trip) per slot it touches, timed by the
server's clock (see transport.py for how it is sent). What a decision does while Redis cannot
be reached within `timeout` is `on_unavailable`'s: `"fail_closed"` raises `RedisUnavailable`
(the default), `"fail_open"` admits without counting, `"local"` decides with an in-process
limiter of the same limits scaled by `local_fraction` (each host's share of the fleet's limits).

Usage settled while Redis is down (commits, cancels, charges) is kept and replayed once,
idempotently, when it answers again, before the next call (replay.py). It is kept in memory, and
with `replay_dir` also in a journal on disk, written before `commit`/`cancel`/`charge` return:
a process that dies before Redis is back leaves its journal to the next process that starts on
the same directory (or sees Redis come back), which replays it. One window is left: a
settlement whose reply was lost after the server applied it (a timeout or a reset mid-reply) is
kept and replayed once more, so it can count twice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from .._native import ConfigError, StateError
from . import script
from .cells import check_prefix, group_steps
from .failures import explain, redact, unavailable_errors
from .leases import Lease, LeaseBook
from .replay import ReplayQueue
from .transport import Transport

__all__ = ["RedisState", "RedisUnavailable"]

_log = logging.getLogger("llmthrottle")
_MODES = ("fail_closed", "fail_open", "local")
# How many settlements that could not reach Redis are kept for replay (the oldest go first).
_MAX_PENDING = 100_000


class RedisUnavailable(StateError):
    """Redis could not be reached (or did not answer within the timeout)."""


def _refused(error: BaseException) -> StateError:
    """Redis answered with an error (a damaged cell, a key of another type, a server that
    refuses scripts): nothing was written."""
    return StateError(f"Redis refused llmthrottle's script: {error}")


class RedisState:
    """Limiter state in Redis, shared by every process on every host that uses the same server
    (or cluster) and `prefix`.

    `url_or_client` is a URL (`redis://host:6379/0`, `rediss://...`, `unix:///path`) or a
    `redis.Redis` / `redis.cluster.RedisCluster` client; `cluster=True` opens a URL as a Cluster.
    A URL carries the credentials (`redis://:password@host` for `requirepass`,
    `redis://user:password@host` for an ACL user); other keywords go to redis-py, such as TLS's
    `ssl_ca_certs=`, `ssl_certfile=` and `ssl_keyfile=` for `rediss://`. Nothing connects until
    the first call: a server that cannot be reached, refuses the credentials, is not trusted, or
    is a read-only replica is unavailable (see `on_unavailable`), with an error and one log
    line that name it without its password.
    `leases=True` lets this process take slices of a hot rate limit (at most `lease_fraction` of its
    burst, for at most `lease_ttl` seconds) and decide from them locally (see
    `llmthrottle.redis_state.leases`). A decision waits at most `timeout` seconds for Redis; after a
    failure, Redis is tried again at most every `retry_interval` seconds and `on_unavailable`
    decides meanwhile. A concurrency slot is held in Redis for `holder_ttl` seconds and extended by
    a heartbeat while its reservation is open, so the slots of a process that died lapse on their
    own. `replay_dir` (a directory on a local disk, made 0700) journals the usage kept while Redis
    is down, so it outlives this process (see `llmthrottle.redis_state.replay`).
    """

    #: Each decision is a network round trip: the sidecar runs them off its event loop.
    decides_remotely = True

    def __init__(
        self,
        url_or_client: Any = "redis://localhost:6379/0",
        *,
        prefix: str = "llmthrottle:",
        cluster: bool = False,
        timeout: float = 0.5,
        on_unavailable: str = "fail_closed",
        local_fraction: float = 1.0,
        retry_interval: float = 1.0,
        holder_ttl: float = 30.0,
        leases: bool = False,
        lease_fraction: float = 0.1,
        lease_ttl: float = 1.0,
        replay_dir: str | os.PathLike[str] | None = None,
        **client_options: Any,
    ) -> None:
        if on_unavailable not in _MODES:
            raise ConfigError(f"on_unavailable must be one of {', '.join(map(repr, _MODES))}, not {on_unavailable!r}")
        for name, value in (("timeout", timeout), ("retry_interval", retry_interval), ("holder_ttl", holder_ttl)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if (
            isinstance(local_fraction, bool)
            or not isinstance(local_fraction, (int, float))
            or not 0 < local_fraction <= 1
        ):
            raise ConfigError(f"local_fraction must be in (0, 1], not {local_fraction!r}")
        if (
            isinstance(lease_fraction, bool)
            or not isinstance(lease_fraction, (int, float))
            or not 0 < lease_fraction <= 1
        ):
            raise ConfigError(f"lease_fraction must be in (0, 1], not {lease_fraction!r}")
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, (int, float)) or not 0 < lease_ttl <= 3600:
            raise ConfigError(f"lease_ttl must be a positive number of seconds (at most 3600), not {lease_ttl!r}")
        if holder_ttl < 1:
            raise ConfigError("holder_ttl must be at least 1 second (the heartbeat runs every holder_ttl / 3)")
        if replay_dir is not None and not isinstance(replay_dir, (str, os.PathLike)):
            raise ConfigError(f"replay_dir must be a directory's path, not {replay_dir!r}")
        try:
            self.prefix = check_prefix(prefix)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.on_unavailable = on_unavailable
        self.local_fraction = float(local_fraction)
        self.timeout = float(timeout)
        self.retry_interval = float(retry_interval)
        self.holder_ttl_ms = int(holder_ttl * 1000)
        self._url: str | None = url_or_client if isinstance(url_or_client, str) else None
        # How errors and logs name the server: never with its password.
        self._name = "Redis" if self._url is None else f"Redis at {redact(self._url)}"
        self._options = dict(client_options)
        # A Cluster's client is made at its first call (see transport.py).
        self._transport = Transport.open(url_or_client, cluster, self.timeout, self._options)
        self.cluster = self._transport.cluster
        from redis.exceptions import ResponseError

        self._errors = unavailable_errors()
        self._response_error = ResponseError
        self._lock = threading.Lock()
        # Where Redis is down ("" standalone; a node's name on a Cluster) -> when to try again.
        # On a Cluster one dead node fails only the keys of its slots.
        self._outages: dict[str, float] = {}
        # Standalone servers that answered a ping after an outage, not yet a script: a server
        # that answers pings but refuses the script (a read-only replica) stays down, quietly.
        self._probing: set[str] = set()
        self._reasons: dict[str, str] = {}  # where -> why it was last unavailable
        self._queue = ReplayQueue(_MAX_PENDING, replay_dir)
        self._replaying = threading.Lock()
        self._holders: dict[str, list[script.Step]] = {}
        self._abandoned: list[tuple[str, list[script.Step]]] = []
        self._holder_ids = itertools.count()
        self._process = uuid.uuid4().hex[:12]
        self._heartbeat: threading.Thread | None = None
        self._closed = threading.Event()
        self.leases = LeaseBook(float(lease_fraction), float(lease_ttl)) if leases else None
        self.stats = {
            "unavailable": 0,
            "fallback_decisions": 0,
            "outages": 0,
            "replayed": 0,
            "pending": 0,
            "dropped": 0,
        }
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(this))
        self._adopt()

    @property
    def client(self) -> Any:
        """The synchronous redis-py client (raises RedisUnavailable when a Cluster's cannot be
        made yet)."""
        try:
            return self._transport.client
        except self._errors as error:
            raise self._failed(error, "?") from None

    def _make_limiter(self, *, limits: Any, rules: Any, budgets: Sequence[Any], namespace: str, clock: Any) -> Any:
        """Called by `llmthrottle.Limiter(...)` for `state=RedisState(...)`."""
        from .limiter import RedisLimiter

        return RedisLimiter(self, limits, rules, budgets, namespace, clock)

    # ------------------------------------------------------------------ running calls

    @property
    def _down(self) -> bool:
        return bool(self._outages)

    def _describe(self, where: str) -> str:
        """How errors and logs name `where`: the URL for a standalone server ("") or a Cluster
        as a whole ("?"), the node's address for one node of a Cluster."""
        return self._name if where in ("", "?") else f"Redis node {where}"

    def _node_of(self, call: script.Call) -> str:
        """Where a call goes: "" on a standalone server, its node's name on a Cluster."""
        if not self.cluster:
            return ""
        if not self._transport.made:
            return "?"
        try:
            return str(self._transport.client.get_node_from_key(call.keys[0]).name)
        except Exception:  # no node known for the slot: the cluster as a whole
            return "?"

    def _check_available(self, where: str) -> None:
        """Raises RedisUnavailable while `where` is known to be down. Once `retry_interval` has
        passed it is tried again: a standalone server is pinged and, when it answers, what
        processes that died meanwhile left in `replay_dir` is taken over, and the caller replays
        what was kept before going on; on a Cluster the call itself is the probe."""
        until = self._outages.get(where)
        if until is None:
            return
        if time.monotonic() < until:
            reason = self._reasons.get(where)
            raise RedisUnavailable(f"{self._describe(where)} was unavailable moments ago ({reason})")
        if not self.cluster:
            try:
                self._transport.client.ping()
            except self._errors as error:
                raise self._failed(error, where) from None
            with self._lock:
                if self._outages.pop(where, None) is None:
                    return
                self._probing.add(where)  # the first script Redis runs (a replay, or the call) confirms it
            self._adopt()

    def _recovered(self, where: str, *, replaced: bool = False) -> None:
        """A script ran where Redis was down: one log line, and what was kept is replayed (on
        a standalone server the call that pinged it replays first, and this is that replay's
        first script, or the call's own)."""
        with self._lock:
            probing = where in self._probing
            self._probing.discard(where)
            if self._outages.pop(where, None) is None and not probing:
                return
        _log.warning(
            "llmthrottle: %s %s; %d settlement(s) to replay",
            self._describe(where),
            "serves no slot any more (a replica took over)" if replaced else "reachable again",
            len(self._queue),
        )
        if not probing:
            self._adopt()  # what processes that died during the outage kept, too
            self.replay()

    def _forget_replaced_nodes(self) -> None:
        """A Cluster node that was down and no longer masters any slot was failed over: its
        slots answer from the promoted replica, so its outage ends (what was kept for it is
        replayed there)."""
        try:
            serving = {node.name for node in self._transport.client.get_primaries()}
        except Exception:  # the client's view of the cluster is being refreshed: next time
            return
        for where in [where for where in self._outages if where not in serving]:
            self._recovered(where, replaced=where != "?")

    def run(self, call: script.Call) -> Any:
        """Runs one script call; raises RedisUnavailable when Redis cannot answer."""
        where = self._node_of(call) if self.cluster else ""
        if self._outages:
            self._check_available(where)
        if self._abandoned:
            self._release_abandoned()
        if self._queue.items:
            self.replay()  # kept settlements go first (a nested call, from the replay, goes on)
            if self._outages:
                self._check_available(where)  # the replay found it down: no second wait
        try:
            result = self._transport.send(call)
        except self._errors as error:
            raise self._failed(error, where) from None
        except self._response_error as error:
            raise _refused(error) from None
        if self._outages or self._probing:
            if self.cluster:
                where = self._node_of(call)  # who answered: the call may have refreshed the slot map
            if where in self._outages or where in self._probing:
                self._recovered(where)
            elif self.cluster:
                self._forget_replaced_nodes()
        return result

    async def run_async(self, call: script.Call) -> Any:
        """`run` for asyncio (a client object given by the caller, or a Cluster, runs `run` in a
        thread)."""
        if not self._transport.runs_async:
            return await asyncio.to_thread(self.run, call)
        if self._outages:
            self._check_available("")
        if self._queue.items:
            await asyncio.to_thread(self.replay)  # kept settlements first, off the event loop
            if self._outages:
                self._check_available("")
        try:
            result = await self._transport.send_async(call)
        except self._errors as error:
            raise self._failed(error) from None
        except self._response_error as error:
            raise _refused(error) from None
        if self._probing:
            self._recovered("")
        return result

    def _failed(self, error: BaseException, where: str = "") -> RedisUnavailable:
        reason = explain(error)
        with self._lock:
            self.stats["unavailable"] += 1
            new = where not in self._outages and where not in self._probing
            self._probing.discard(where)
            self._outages[where] = time.monotonic() + self.retry_interval
            self._reasons[where] = reason
            if new:
                self.stats["outages"] += 1
                _log.warning(
                    "llmthrottle: %s unavailable (%s); on_unavailable=%r",
                    self._describe(where),
                    reason,
                    self.on_unavailable,
                )
        return RedisUnavailable(f"{self._describe(where)} unavailable: {reason}")

    # ------------------------------------------------------------------ settlements

    def settle(self, calls: Sequence[script.Call]) -> None:
        """Runs settlement calls (usage, refunds, releases); those Redis cannot take now are
        kept and replayed when it answers again."""
        for call in calls:
            try:
                self.run(call)
            except RedisUnavailable:
                self._keep(call)

    def _keep(self, call: script.Call) -> None:
        self._queue.keep(call)
        self.stats["pending"], self.stats["dropped"] = len(self._queue), self._queue.dropped

    def _adopt(self) -> None:
        """Takes over what processes that died left in `replay_dir` (replayed with the next
        call to Redis)."""
        taken = self._queue.adopt()
        if taken:
            self.stats["pending"], self.stats["dropped"] = len(self._queue), self._queue.dropped
            _log.warning(
                "llmthrottle: took over %d settlement(s) that stopped processes left in %s", taken, self.replay_dir
            )

    def replay(self) -> int:
        """Sends the settlements kept while Redis was down (and those taken over from the
        journals of processes that died), oldest first, each applied at most once (a marker
        in Redis remembers it for a day). Stops at the first that Redis cannot take yet.
        Returns how many were sent."""
        if not self._replaying.acquire(blocking=False):
            return 0  # another thread is replaying, or this is a call the replay makes
        sent = refused = 0
        first_refusal = ""
        try:
            while (kept := self._queue.head()) is not None:
                operation, call = kept
                try:
                    self.run(call)
                except RedisUnavailable:
                    break
                except StateError as error:  # a damaged cell: it would be refused forever
                    refused += 1
                    first_refusal = first_refusal or str(error)
                else:
                    sent += 1
                self._queue.done(operation)
            self._queue.settled()
        finally:
            self._replaying.release()
        with self._lock:
            self._queue.dropped += refused
            self.stats["replayed"] += sent
            self.stats["pending"], self.stats["dropped"] = len(self._queue), self._queue.dropped
        if refused:
            _log.warning("llmthrottle: Redis refused %d kept settlement(s), dropped: %s", refused, first_refusal)
        return sent

    @property
    def pending(self) -> int:
        """Settlements waiting for Redis."""
        return len(self._queue)

    @property
    def replay_dir(self) -> str | None:
        """Where kept settlements are journaled (None: in memory only)."""
        journal = self._queue.journal
        return None if journal is None else str(journal.directory)

    # ------------------------------------------------------------------ concurrency holders

    def new_holder(self) -> str:
        return f"{self._process}:{os.getpid()}:{next(self._holder_ids)}"

    def hold(self, holder: str, steps: list[script.Step]) -> None:
        """Keeps `holder`'s slots alive until `release`."""
        with self._lock:
            self._holders[holder] = steps
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._closed.clear()
                self._heartbeat = threading.Thread(target=self._beat, name="llmthrottle-redis-heartbeat", daemon=True)
                self._heartbeat.start()

    def release(self, holder: str) -> None:
        with self._lock:
            self._holders.pop(holder, None)

    def abandon(self, holder: str) -> None:
        """A reservation was dropped unsettled: its slots are released with the next call.
        (Called from a finaliser, which may run inside any code: no lock, no I/O.)"""
        steps = self._holders.pop(holder, None)
        if steps:
            self._abandoned.append((holder, steps))

    def _release_abandoned(self) -> None:
        taken = []
        while self._abandoned:
            taken.append(self._abandoned.pop())  # atomic: a finaliser may append from any thread
        for holder, steps in taken:
            self.settle([script.build("settle", group, holder=holder) for group in group_steps(steps, self.cluster)])

    def _beat(self) -> None:
        while not self._closed.wait(self.holder_ttl_ms / 3000):
            with self._lock:
                held = [step._replace(extra=holder) for holder, steps in list(self._holders.items()) for step in steps]
            if not held:
                continue
            for group in group_steps(held, self.cluster):
                try:
                    self.run(script.build("extend", group, holder_ttl_ms=self.holder_ttl_ms))
                except RedisUnavailable:
                    break
            if self._abandoned and not self._down:
                self._release_abandoned()  # what Redis cannot take is kept for replay
            if self._queue.items:
                self.replay()

    def _after_fork(self) -> None:
        # The parent's holders and heartbeat stay the parent's.
        self._lock = threading.Lock()
        self._holders = {}
        self._heartbeat = None
        self._process = uuid.uuid4().hex[:12]
        self._transport.after_fork()
        self._queue.after_fork()
        self._replaying = threading.Lock()

    # ------------------------------------------------------------------ leases

    def give_back_leases(self, leases: Sequence[Lease]) -> None:
        """Refunds what is left of `leases` in Redis (the part that has not drained yet)."""
        steps = [lease.step._replace(amount=-lease.left, extra=lease.mark) for lease in leases if lease.left > 0]
        if self.leases is not None:
            self.leases.stats["units_returned"] += sum(-step.amount for step in steps)
        for group in group_steps(steps, self.cluster):
            self.settle([script.build("settle", group)])

    def return_leases(self, *, every: bool) -> None:
        """Gives back the leases whose time is up (or all of them)."""
        if self.leases is None:
            return
        with self.leases.lock:
            leases = self.leases.drain() if every else self.leases.expired(time.monotonic())
        if leases:
            self.give_back_leases(leases)

    def take_back_leases(self, cells: Sequence[str]) -> bool:
        """Gives back this process's slices of `cells`; True when any held units."""
        if self.leases is None:
            return False
        with self.leases.lock:
            leases = [lease for lease in (self.leases.leases.pop(cell, None) for cell in cells) if lease is not None]
        self.give_back_leases(leases)
        return any(lease.left for lease in leases)

    def unuse(self, unused: Sequence[tuple[Lease, int]]) -> None:
        """Units a leased admission did not use go back to their lease while it lasts (after
        that, the lease was already given back and they are simply not used)."""
        if not unused or self.leases is None:
            return
        now = time.monotonic()
        with self.leases.lock:
            for lease, units in unused:
                if self.leases.leases.get(lease.cell) is lease and not lease.expired(now):
                    lease.left += units

    # ------------------------------------------------------------------ misc

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(self._transport.client.ping())
        except self._errors:
            return False

    def close(self) -> None:
        """Gives back what is left of this process's leases, stops the heartbeat and closes
        the connections."""
        if self.leases is not None and self.leases.leases and not self._down:
            try:
                self.return_leases(every=True)
            except Exception:  # closing must not fail: unused slices only under-use the limit
                pass
        self._closed.set()
        self._queue.close()
        self._transport.close()

    def __reduce__(self) -> Any:
        if self._url is None:
            raise TypeError("a RedisState built on a client object cannot be pickled; build it from a URL")
        options: dict[str, Any] = {
            "prefix": self.prefix,
            "cluster": self.cluster,
            "timeout": self.timeout,
            "on_unavailable": self.on_unavailable,
            "local_fraction": self.local_fraction,
            "retry_interval": self.retry_interval,
            "holder_ttl": self.holder_ttl_ms / 1000,
            "replay_dir": self.replay_dir,
        }
        if self.leases is not None:
            options.update(leases=True, lease_fraction=self.leases.fraction, lease_ttl=self.leases.ttl)
        return (_rebuild, (self._url, {**options, **self._options}))

    def __repr__(self) -> str:
        where = redact(self._url) if self._url is not None else type(self._transport.client).__name__
        return f"RedisState({where!r}, prefix={self.prefix!r}, on_unavailable={self.on_unavailable!r})"


def _rebuild(url: str, options: dict[str, Any]) -> RedisState:
    return RedisState(url, **options)


def _after_fork(state: weakref.ref[RedisState]) -> None:
    alive = state()
    if alive is not None:
        alive._after_fork()
