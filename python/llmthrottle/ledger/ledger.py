"""`Ledger`: every committed call, durably recorded and queryable.

    with lt.Ledger("/var/lib/myapp/ledger") as ledger:
        ledger.record(model="gpt-4o", cost_micros=c.total_micros, tenant="acme", input_tokens=...)
        ledger.spend(tenant="acme", since=month_start)          # -> int micro-dollars

Design (why `record()` costs a few microseconds yet loses nothing):

1. `record()` encodes the record as one CRC-framed line and appends it to this process's journal
   with a single `os.write` (see journal.py). When `record()` returns, the kernel holds the
   bytes: a crash or SIGKILL of the process cannot lose them.
2. A background thread batches pending records into SQLite (WAL) in one transaction per batch,
   with the journal's checkpoint offset in the same transaction (see store.py).
3. Every record's id is the primary key and inserts are INSERT OR IGNORE, so replaying a journal
   again after a crash stores nothing twice.
4. On open, and periodically, the ledger replays the journals of dead processes (a journal whose
   `flock` can be taken has no living owner), then deletes them. A clean `close()` deletes its
   own fully checkpointed journal; a journal passing `rotate_bytes` is replaced by a new one and
   deleted once checkpointed.

Several processes may share one ledger directory, each with its own journal; SQLite serialises
their batch writes. Designs tried and dropped: writing SQLite from `record()` (tens of µs and a
lock on the hot path); an in-memory queue alone (SIGKILL loses the queue); one journal shared by
all processes (offsets and rotation then need cross-process coordination).
"""

from __future__ import annotations

import atexit
import glob
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time as _time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import count
from typing import Any, TypeVar

from . import store
from .call import cost_columns
from .journal import (
    JOURNAL_PREFIX,
    JOURNAL_SUFFIX,
    Journal,
    ReplayStats,
    encode_frame,
    iter_frames,
    read_all,
    try_claim,
)
from .quarantine import Quarantine
from .store import MAX_COST_MICROS, MAX_LATENCY_US, MAX_TIME_US, MAX_TOKENS, UsageRecord

__all__ = ["Ledger"]

_log = logging.getLogger("llmthrottle.ledger")
_T = TypeVar("_T")
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_DB_NAME = "ledger.sqlite3"
_REPLAY_BATCH = 5000


_COUNT_NAMES = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
_KEY_NAMES = ("tenant", "user", "team", "feature", "provider", "outcome")


def _raise_bad_count(values: Sequence[Any]) -> None:
    # Off the hot path: only called once a check has failed, to name the field.
    for name, value in zip(_COUNT_NAMES, values):
        if type(value) is not int or not 0 <= value <= MAX_TOKENS:
            raise ValueError(f"{name} must be an integer in [0, {MAX_TOKENS}], got {value!r}")


def _raise_bad_key(*values: Any) -> None:
    for name, value in zip(_KEY_NAMES, values):
        if value is not None and type(value) is not str:
            raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")


class Ledger:
    """A durable, multi-process usage ledger stored in a directory.

    `record()` is safe to call from any thread and returns once the record is in the kernel;
    queries (`spend`, `records`, `aggregate`, `top`) first flush this process's pending records,
    so a process always reads its own writes. Records of other live processes become visible
    within about `flush_interval` seconds.

    `sync=True` also fsyncs every journal write and commits SQLite with synchronous=FULL, for
    durability across power loss at the price of a disk flush per record.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        flush_interval: float = 0.05,
        recover_interval: float = 5.0,
        rotate_bytes: int = 64 << 20,
        sync: bool = False,
        group_access: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        # Every file the ledger makes is private to its owner, or with `group_access` shared
        # with the directory's group (0660), for writers of several uids in one group.
        self.file_mode = 0o660 if group_access else 0o600
        self.readonly = readonly
        self._db_path = os.path.join(self.path, _DB_NAME)
        self._flush_interval = flush_interval
        self._recover_interval = recover_interval
        self._rotate_bytes = rotate_bytes
        self._sync = sync
        self._closed = False
        self._read_lock = threading.Lock()
        self.last_replay = ReplayStats()
        self.quarantine = Quarantine(self.path, self.file_mode)
        if readonly:
            if not os.path.exists(self._db_path):
                raise FileNotFoundError(f"no ledger at {self.path} ({_DB_NAME} missing)")
            self._reader = store.connect(self._db_path, readonly=True)
            return
        if not os.path.isdir(self.path):
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            if group_access:
                os.chmod(self.path, 0o770)  # past the umask: the group's writers must get in
        self._writer = store.connect(self._db_path, sync=sync, mode=self.file_mode)
        self._reader = store.connect(self._db_path, sync=sync, mode=self.file_mode)
        self._start_writing()
        self.recover()
        _open_ledgers.add(self)

    # ------------------------------------------------------------------ writing

    def _start_writing(self) -> None:
        """Fresh per-process writing state: journal, queue, locks, flusher (also after fork)."""
        self._write_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._pending: deque[tuple[tuple[Any, ...], Journal, int]] = deque()
        self._retired: list[Journal] = []
        # Ids are unique without coordination: a random per-instance prefix plus a counter.
        # itertools.count's next() is atomic under the GIL.
        self._id_prefix = f"{_time.time_ns() // 1000:x}{secrets.token_hex(4)}-"
        self._ids = count()
        self._journal = self._new_journal()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="llmthrottle-ledger", daemon=True)
        self._flusher.start()

    def _new_journal(self) -> Journal:
        stem = f"{os.getpid()}-{_time.time_ns()}-{secrets.token_hex(3)}"
        return Journal(self.path, stem, self._sync, self.file_mode)

    def record(
        self,
        *,
        model: str,
        cost_micros: int,
        provider: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        team: str | None = None,
        feature: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        latency_s: float | None = None,
        outcome: str | None = "ok",
        tags: Mapping[str, Any] | None = None,
        id: str | None = None,
        time: float | None = None,
    ) -> str:
        """Durably record one call; returns its id.

        An `id` given by the caller is an idempotency key: recording the same id twice stores
        it once. `time` is unix seconds (default: now). Token fields are disjoint (see
        UsageRecord); `tags` must be JSON-serialisable (no NaN)."""
        if self._closed or self.readonly:
            raise ValueError("ledger is closed" if self._closed else "ledger is read-only")
        if type(model) is not str or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        if type(cost_micros) is not int or not 0 <= cost_micros <= MAX_COST_MICROS:
            raise ValueError(f"cost_micros must be an integer in [0, {MAX_COST_MICROS}], got {cost_micros!r}")
        if latency_s is None:
            latency_us = None
        elif (
            isinstance(latency_s, (int, float))
            and type(latency_s) is not bool
            and math.isfinite(latency_s)
            and 0 <= latency_s <= MAX_LATENCY_US / 1e6
        ):
            latency_us = round(latency_s * 1_000_000)
        else:
            raise ValueError(
                f"latency_s must be a number of seconds in [0, {MAX_LATENCY_US // 10**6}], got {latency_s!r}"
            )
        if time is None:
            ts_us = _time.time_ns() // 1000
        elif (
            isinstance(time, (int, float))
            and type(time) is not bool
            and math.isfinite(time)
            and abs(time) <= MAX_TIME_US / 1e6
        ):
            ts_us = round(time * 1_000_000)
        else:
            raise ValueError(f"time must be unix seconds within ±{MAX_TIME_US // 10**6}, got {time!r}")
        counts = (input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens)
        for value in counts:
            if type(value) is not int or not 0 <= value <= MAX_TOKENS:
                _raise_bad_count(counts)
        for key in (tenant, user, team, feature, provider, outcome):
            if key is not None and type(key) is not str:
                _raise_bad_key(tenant, user, team, feature, provider, outcome)
        row = (
            f"{self._id_prefix}{next(self._ids):012x}" if id is None else _id_arg(id),
            ts_us,
            tenant,
            user,
            team,
            feature,
            model,
            provider,
            *counts,
            cost_micros,
            latency_us,
            outcome,
            _encode(dict(tags)) if tags else None,
        )
        frame = encode_frame(_encode(row).encode())
        with self._write_lock:
            journal = self._journal
            end = journal.append(frame)
            # Appended under the same lock as the write, so queue order is file order and a
            # checkpoint offset never skips an unflushed frame.
            self._pending.append((row, journal, end))
            if end >= self._rotate_bytes:
                self._retired.append(journal)
                self._journal = self._new_journal()
        return row[0]

    def record_cost(
        self,
        cost: Any,
        *,
        latency_s: float | None = None,
        outcome: str | None = "ok",
        tags: Mapping[str, Any] | None = None,
        id: str | None = None,
        time: float | None = None,
        **keys: str | None,
    ) -> str:
        """Record a `pricing.Cost` with its tokens; `keys` are tenant, user, team, feature."""
        columns: dict[str, Any] = {**cost_columns(cost), **keys}
        return self.record(**columns, latency_s=latency_s, outcome=outcome, tags=tags, id=id, time=time)

    def flush(self) -> None:
        """Return once every record accepted before this call is stored in SQLite."""
        if not self.readonly and not self._closed:
            self._drain()

    def _drain(self) -> None:
        with self._drain_lock:
            while self._pending:
                batch = []
                pending = self._pending
                for _ in range(min(len(pending), 20_000)):
                    batch.append(pending.popleft())
                checkpoints = {journal.name: end for _, journal, end in batch}
                try:
                    store.insert(self._writer, [row for row, _, _ in batch], checkpoints)
                except sqlite3.OperationalError:
                    pending.extendleft(reversed(batch))  # still journaled (disk, lock): retry later
                    raise
                except (sqlite3.DatabaseError, OverflowError, ValueError, TypeError):
                    self._insert_each([row for row, _, _ in batch], checkpoints)
                for _, journal, end in batch:
                    journal.checkpointed = end
            self._remove_retired()

    def _insert_each(self, rows: list[tuple[Any, ...]], checkpoints: Mapping[str, int]) -> None:
        """Stores a batch that SQLite refused row by row, quarantining the rows it still
        refuses, so that one bad record never holds back the others."""
        for row in rows:
            try:
                store.insert(self._writer, [row], {})
            except sqlite3.OperationalError:
                raise
            except (sqlite3.DatabaseError, OverflowError, ValueError, TypeError) as error:
                self.quarantine.add("record", f"{type(error).__name__}: {error}", _encode(list(row)))
        store.insert(self._writer, [], checkpoints)

    def _remove_retired(self) -> None:
        done = [j for j in self._retired if j.checkpointed >= j.size]
        if not done:
            return
        for journal in done:
            journal.remove()
        store.forget_journals(self._writer, (j.name for j in done))
        self._retired = [j for j in self._retired if j not in done]

    def _flush_loop(self) -> None:
        next_recovery = _time.monotonic() + self._recover_interval
        while not self._stop.is_set():
            self._wake.wait(self._flush_interval)
            try:
                self._drain()
                if _time.monotonic() >= next_recovery:
                    next_recovery = _time.monotonic() + self._recover_interval
                    self.recover()
            except Exception:
                # Records stay journaled and queued; the next round retries.
                _log.exception("ledger flush to %s failed; will retry", self._db_path)
                self._stop.wait(1.0)

    # ------------------------------------------------------------------ recovery

    def recover(self) -> ReplayStats:
        """Replay and delete the journals of processes that are gone. Safe to run anywhere,
        any number of times: a live owner's journal is locked, and replay is idempotent."""
        stats = ReplayStats()
        if self.readonly:
            return stats
        pattern = os.path.join(glob.escape(self.path), f"{JOURNAL_PREFIX}*{JOURNAL_SUFFIX}")
        for path in sorted(glob.glob(pattern)):
            fd = try_claim(path)
            if fd is None:
                continue
            try:
                self._replay(path, fd, stats)
            finally:
                os.close(fd)
        if stats.corrupt_frames or stats.torn_tail_bytes:
            _log.warning(
                "ledger recovery in %s: %d corrupt frames skipped, %d torn tail bytes",
                self.path,
                stats.corrupt_frames,
                stats.torn_tail_bytes,
            )
        self.last_replay = stats
        return stats

    def _replay(self, path: str, fd: int, stats: ReplayStats) -> None:
        name = os.path.basename(path)
        with self._drain_lock:
            start = store.checkpoint_of(self._writer, name)
            data = read_all(fd)
            batch: list[Any] = []
            end = start
            for payload, end in iter_frames(data, start, stats):
                row = _decode_row(payload)
                if row is None:  # intact frame, but not a record this version writes
                    stats.frames -= 1
                    stats.corrupt_frames += 1
                    self.quarantine.add(name, "intact frame that is not a ledger record", payload)
                    continue
                batch.append(row)
                if len(batch) >= _REPLAY_BATCH:
                    store.insert(self._writer, batch, {name: end})
                    batch = []
            if batch:
                store.insert(self._writer, batch, {name: end})
            os.unlink(path)
            store.forget_journals(self._writer, [name])

    # ------------------------------------------------------------------ queries

    def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        self.flush()
        with self._read_lock:
            return query(self._reader)

    def spend(self, *, since: float | None = None, until: float | None = None, **filters: Any) -> int:
        """Total cost in micro-dollars over [since, until) (unix seconds) of records matching
        every filter: `tenant="acme"`, `model=["gpt-4o", "o3"]`, or any tag name."""
        return self._read(lambda c: store.spend(c, since, until, filters))

    def aggregate(
        self, group_by: Sequence[str], *, since: float | None = None, until: float | None = None, **filters: Any
    ) -> list[dict[str, Any]]:
        """Calls, tokens and cost per group, most expensive first. Group keys: tenant, user,
        team, feature, model, provider, outcome, `day` (UTC), or any tag name."""
        return self._read(lambda c: store.aggregate(c, list(group_by), since, until, filters))

    def top(
        self, limit: int = 10, *, since: float | None = None, until: float | None = None, **filters: Any
    ) -> list[UsageRecord]:
        """The most expensive calls."""
        return self._read(lambda c: store.top(c, limit, since, until, filters))

    def records(
        self, *, since: float | None = None, until: float | None = None, **filters: Any
    ) -> Iterator[UsageRecord]:
        """Every matching record in time order, read page by page."""
        self.flush()

        def run(query: Callable[[sqlite3.Connection], _T]) -> _T:
            with self._read_lock:
                return query(self._reader)

        return store.iterate(run, since, until, filters)

    def __len__(self) -> int:
        return self._read(lambda c: int(c.execute("SELECT COUNT(*) FROM records").fetchone()[0]))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Flush, delete this process's journal, stop the flusher. Idempotent."""
        if self._closed:
            return
        if self.readonly:
            self._closed = True
            self._reader.close()
            return
        self._stop.set()
        self._wake.set()
        self._flusher.join()
        with self._write_lock:
            self._closed = True
            self._retired.append(self._journal)
        # If this fails the journal stays on disk and the next open replays it.
        self._drain()
        self._writer.close()
        self._reader.close()
        _open_ledgers.discard(self)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        # The child must not write the parent's journal (offsets would interleave) nor touch the
        # parent's SQLite connections. Closing our copy of the journal fd keeps the parent's
        # lock: flock belongs to the open file description the parent still holds.
        for journal in [self._journal, *self._retired]:
            journal.close()
        _forked_connections.extend((self._writer, self._reader))  # never closed in the child
        self._writer = store.connect(self._db_path, sync=self._sync)
        self._reader = store.connect(self._db_path, sync=self._sync)
        self._read_lock = threading.Lock()
        self._start_writing()


def _decode_row(payload: bytes) -> tuple[Any, ...] | None:
    try:
        row = json.loads(payload)
    except (ValueError, RecursionError):  # ValueError includes UnicodeDecodeError
        return None
    return tuple(row) if store.valid_row(row) else None


def _id_arg(value: Any) -> str:
    if type(value) is not str or not value:
        raise ValueError(f"id must be a non-empty str, got {value!r}")
    return value


_open_ledgers: weakref.WeakSet[Ledger] = weakref.WeakSet()
_forked_connections: list[sqlite3.Connection] = []


def _after_fork() -> None:
    for ledger in list(_open_ledgers):
        if not ledger._closed:
            ledger._after_fork_in_child()


def _close_all_at_exit() -> None:
    for ledger in list(_open_ledgers):
        try:
            ledger.close()
        except Exception:
            _log.exception("closing ledger %s at exit failed; its journal will be replayed", ledger.path)


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_close_all_at_exit)
