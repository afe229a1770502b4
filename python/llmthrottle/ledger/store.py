"""The SQLite half of the ledger: the queryable copy of every journaled record.

Each record's id is the PRIMARY KEY and every insert is INSERT OR IGNORE, so replaying a journal
any number of times (after a crash, or by two recovering processes at once) stores each record
exactly once. The per-journal checkpoint offset is written in the same transaction as the rows it
covers; it only bounds how much a replay has to reread, correctness never depends on it.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COLUMNS",
    "DIMENSIONS",
    "MAX_COST_MICROS",
    "MAX_LATENCY_US",
    "MAX_TIME_US",
    "MAX_TOKENS",
    "UsageRecord",
    "connect",
    "group_expression",
    "valid_row",
]

SCHEMA_VERSION = 1

# Order of the row tuples journaled and inserted; the journal format depends on it.
COLUMNS = (
    "id",
    "ts_us",
    "tenant",
    "user",
    "team",
    "feature",
    "model",
    "provider",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_micros",
    "latency_us",
    "outcome",
    "tags",
)

# Keys with their own column; any other key is looked up in the `tags` JSON.
DIMENSIONS = ("tenant", "user", "team", "feature", "model", "provider", "outcome")
# Bounds of a stored record. Each keeps the field, and SUM() over millions of records, far inside
# SQLite's signed 64-bit integers, so no record can make an insert or a query overflow.
MAX_TOKENS = 10**12
MAX_COST_MICROS = 10**12  # $1,000,000 for one call
MAX_TIME_US = 10**11 * 10**6  # unix seconds up to 1e11 (the year 5138)
MAX_LATENCY_US = 10**9 * 10**6  # about 31 years

_TAG_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    tenant TEXT, user TEXT, team TEXT, feature TEXT, model TEXT, provider TEXT,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    latency_us INTEGER,
    outcome TEXT,
    tags TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_time ON records (ts_us);
CREATE INDEX IF NOT EXISTS records_by_tenant ON records (tenant, ts_us);
CREATE TABLE IF NOT EXISTS checkpoints (journal TEXT PRIMARY KEY, offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""

_INSERT = f"INSERT OR IGNORE INTO records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


_BOUNDS: tuple[tuple[int, int] | None, ...] = (
    None,
    (-MAX_TIME_US, MAX_TIME_US),
    None,
    None,
    None,
    None,
    None,
    None,
    *((0, MAX_TOKENS),) * 5,
    (0, MAX_COST_MICROS),
    (0, MAX_LATENCY_US),
    None,
    None,
)
_NULLABLE = frozenset(("tenant", "user", "team", "feature", "provider", "latency_us", "outcome", "tags"))


def valid_row(row: Any) -> bool:
    """Whether a row read back from a journal is one `Ledger.record` could have written: the
    right number of columns, each of its type and within its bounds."""
    if type(row) is not list or len(row) != len(COLUMNS):
        return False
    for name, value, bounds in zip(COLUMNS, row, _BOUNDS):
        if value is None:
            if name not in _NULLABLE:
                return False
        elif bounds is None:
            if type(value) is not str or (not value and name in ("id", "model")):
                return False
        elif type(value) is not int or not bounds[0] <= value <= bounds[1]:
            return False
    return True


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One committed call. Token fields are disjoint: `input_tokens` is uncached input,
    `output_tokens` includes `reasoning_tokens`. Money is integer micro-dollars."""

    id: str
    time: float
    model: str
    cost_micros: int
    provider: str | None = None
    tenant: str | None = None
    user: str | None = None
    team: str | None = None
    feature: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    latency_s: float | None = None
    outcome: str | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cost_usd(self) -> float:
        """For display only."""
        return self.cost_micros / 1_000_000

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> UsageRecord:
        (
            rid,
            ts_us,
            tenant,
            user,
            team,
            feature,
            model,
            provider,
            input_tokens,
            output_tokens,
            cached,
            cache_write,
            reasoning,
            cost_micros,
            latency_us,
            outcome,
            tags,
        ) = row
        return cls(
            id=rid,
            time=ts_us / 1e6,
            model=model,
            cost_micros=cost_micros,
            provider=provider,
            tenant=tenant,
            user=user,
            team=team,
            feature=feature,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached,
            cache_write_tokens=cache_write,
            reasoning_tokens=reasoning,
            latency_s=None if latency_us is None else latency_us / 1e6,
            outcome=outcome,
            tags=json.loads(tags) if tags else {},
        )


def connect(path: str, *, readonly: bool = False, sync: bool = False, mode: int = 0o600) -> sqlite3.Connection:
    """A connection in WAL mode: readers never block the writer, nor the writer readers."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
        # The journals' mode (owner-only by default), set by path before WAL mode makes the -wal and -shm files
        # (SQLite gives them the database file's mode). Never by opening the file ourselves:
        # closing any descriptor of it would drop the POSIX locks SQLite holds on it in this
        # process, which corrupts the database under concurrent writers.
        for name in (path, f"{path}-wal", f"{path}-shm"):
            try:
                os.chmod(name, mode)
            except FileNotFoundError:
                pass
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives any process crash; FULL is needed to also survive power loss.
        conn.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
        conn.executescript(_SCHEMA)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def insert(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]], checkpoints: Mapping[str, int]) -> None:
    """Store rows and advance journal checkpoints in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, rows)
        conn.executemany(
            "INSERT INTO checkpoints VALUES (?, ?) ON CONFLICT(journal) "
            "DO UPDATE SET offset = max(offset, excluded.offset)",
            checkpoints.items(),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def checkpoint_of(conn: sqlite3.Connection, journal: str) -> int:
    row = conn.execute("SELECT offset FROM checkpoints WHERE journal = ?", (journal,)).fetchone()
    return 0 if row is None else int(row[0])


def forget_journals(conn: sqlite3.Connection, journals: Iterable[str]) -> None:
    conn.executemany("DELETE FROM checkpoints WHERE journal = ?", ((j,) for j in journals))


def group_expression(key: str) -> tuple[str, list[Any]]:
    """SQL expression (and its parameters) for grouping or filtering by `key`: a column for the
    standard dimensions, `day` (UTC date), or any other name as a key of the `tags` JSON."""
    if key in DIMENSIONS:
        return f'"{key}"', []
    if key == "day":
        return "date(ts_us / 1000000, 'unixepoch')", []
    name = key[4:] if key.startswith("tag:") else key
    if not _TAG_NAME.match(name):
        raise ValueError(f"invalid tag name {key!r}: use letters, digits, '_', '.', ':', '-'")
    return "json_extract(tags, ?)", [f'$."{name}"']


def where_clause(since: float | None, until: float | None, filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """WHERE clause for a time range [since, until) in unix seconds and equality filters
    (a value may be None, or a list/tuple/set meaning any of)."""
    parts: list[str] = []
    params: list[Any] = []
    if since is not None:
        parts.append("ts_us >= ?")
        params.append(int(since * 1_000_000))
    if until is not None:
        parts.append("ts_us < ?")
        params.append(int(until * 1_000_000))
    for key, value in filters.items():
        expression, expression_params = group_expression(key)
        if value is None:
            parts.append(f"{expression} IS NULL")
            params.extend(expression_params)
        elif isinstance(value, (list, tuple, set, frozenset)):
            values = list(value)
            if not values:
                parts.append("0")
                continue
            parts.append(f"{expression} IN ({', '.join('?' * len(values))})")
            params.extend(expression_params)
            params.extend(values)
        else:
            parts.append(f"{expression} = ?")
            params.extend(expression_params)
            params.append(value)
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def spend(conn: sqlite3.Connection, since: float | None, until: float | None, filters: Mapping[str, Any]) -> int:
    where, params = where_clause(since, until, filters)
    row = conn.execute(f"SELECT COALESCE(SUM(cost_micros), 0) FROM records{where}", params).fetchone()
    return int(row[0])


_SUMS = (
    "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cached_input_tokens), "
    "SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(cost_micros)"
)
AGGREGATE_FIELDS = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_micros",
)


def aggregate(
    conn: sqlite3.Connection,
    group_by: Sequence[str],
    since: float | None,
    until: float | None,
    filters: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """One dict per group: the group keys, then AGGREGATE_FIELDS; most expensive first."""
    select: list[str] = []
    params: list[Any] = []
    for key in group_by:
        expression, expression_params = group_expression(key)
        select.append(expression)
        params.extend(expression_params)
    where, where_params = where_clause(since, until, filters)
    keys = ", ".join(select)
    sql = f"SELECT {keys + ', ' if keys else ''}{_SUMS} FROM records{where}"
    if keys:
        group_positions = ", ".join(str(i + 1) for i in range(len(select)))
        sql += f" GROUP BY {group_positions} ORDER BY {len(select) + 7} DESC, {group_positions}"
    result = []
    for row in conn.execute(sql, params + where_params):
        entry: dict[str, Any] = dict(zip(group_by, row[: len(group_by)]))
        entry.update(zip(AGGREGATE_FIELDS, (int(v or 0) for v in row[len(group_by) :])))
        result.append(entry)
    return result


def top(
    conn: sqlite3.Connection, limit: int, since: float | None, until: float | None, filters: Mapping[str, Any]
) -> list[UsageRecord]:
    where, params = where_clause(since, until, filters)
    sql = f"SELECT {', '.join(COLUMNS)} FROM records{where} ORDER BY cost_micros DESC, ts_us LIMIT ?"
    return [UsageRecord.from_row(r) for r in conn.execute(sql, [*params, limit])]


def page(
    conn: sqlite3.Connection,
    after: tuple[int, str] | None,
    size: int,
    since: float | None,
    until: float | None,
    filters: Mapping[str, Any],
) -> list[tuple[Any, ...]]:
    """A page of rows in (time, id) order, strictly after `after` (keyset pagination, so a long
    iteration never holds a read transaction or a lock between pages)."""
    where, params = where_clause(since, until, filters)
    if after is not None:
        where += (" AND " if where else " WHERE ") + "(ts_us, id) > (?, ?)"
        params.extend(after)
    sql = f"SELECT {', '.join(COLUMNS)} FROM records{where} ORDER BY ts_us, id LIMIT ?"
    return conn.execute(sql, [*params, size]).fetchall()


def iterate(
    conn_factory: Any, since: float | None, until: float | None, filters: Mapping[str, Any], page_size: int = 1000
) -> Iterator[UsageRecord]:
    after: tuple[int, str] | None = None
    while True:
        rows = conn_factory(lambda conn, after=after: page(conn, after, page_size, since, until, filters))
        for row in rows:
            yield UsageRecord.from_row(row)
        if len(rows) < page_size:
            return
        after = (rows[-1][1], rows[-1][0])
