"""Virtual API keys: who may call the gateway, as which tenant, team and user, in which tier.

A key is `ltk_<id>_<secret>`: the id names it in listings and logs, the secret is shown once
when the key is made (or rotated) and only its SHA-256 is stored, in SQLite. Looking a key up
costs one indexed read; the gateway keeps what it read for a few seconds, so a revocation takes
effect within `cache_s`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._native import ConfigError

__all__ = ["Caller", "KeyStore", "VirtualKey"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    tenant TEXT NOT NULL,
    team TEXT,
    user TEXT,
    tier TEXT NOT NULL,
    models TEXT,            -- JSON list of allowed model aliases; NULL: every alias
    expires_at REAL,        -- Unix seconds; NULL: never
    created_at REAL NOT NULL,
    revoked_at REAL
)
"""
_PREFIX = "ltk_"


@dataclass(frozen=True)
class Caller:
    """Who a request comes from, as its key or token says."""

    key_id: str
    tenant: str
    team: str | None
    user: str | None
    tier: str
    models: tuple[str, ...] | None

    def limiter_keys(self) -> list[str]:
        """The keys its calls are limited, budgeted and recorded under."""
        keys = [f"key:{self.key_id}", f"tenant:{self.tenant}"]
        if self.team:
            keys.append(f"team:{self.team}")
        if self.user:
            keys.append(f"user:{self.user}")
        return keys

    def may_use(self, alias: str) -> bool:
        return self.models is None or alias in self.models


@dataclass(frozen=True)
class VirtualKey:
    """A stored key, as listed (never with its secret)."""

    id: str
    tenant: str
    team: str | None
    user: str | None
    tier: str
    models: tuple[str, ...] | None
    expires_at: float | None
    created_at: float
    revoked_at: float | None

    def caller(self) -> Caller:
        return Caller(self.id, self.tenant, self.team, self.user, self.tier, self.models)

    def describe(self) -> dict[str, Any]:
        """The key as the admin API and the `keys` CLI show it (never its secret)."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "team": self.team,
            "user": self.user,
            "tier": self.tier,
            "models": list(self.models) if self.models is not None else None,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "revoked": self.revoked_at is not None,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_name(value: str | None, what: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise ConfigError(f"{what} is required")
        return None
    if not isinstance(value, str) or not value or len(value) > 128 or any(c in value for c in "\x00\n\r"):
        raise ConfigError(f"{what} must be 1-128 printable characters, not {value!r}")
    return value


class KeyStore:
    """The virtual keys in the SQLite file at `path` (created with mode 0600)."""

    def __init__(self, path: str, *, cache_s: float = 5.0) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fresh = not os.path.exists(path)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if fresh:
            os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    def create(
        self,
        *,
        tenant: str,
        tier: str,
        team: str | None = None,
        user: str | None = None,
        models: Sequence[str] | None = None,
        expires_at: float | None = None,
    ) -> tuple[str, VirtualKey]:
        """Makes a key; returns its plaintext (shown only now) and its record."""
        _check_name(tenant, "tenant", required=True)
        _check_name(tier, "tier", required=True)
        _check_name(team, "team")
        _check_name(user, "user")
        for model in models or ():
            _check_name(model, "a model")
        if expires_at is not None and not (isinstance(expires_at, (int, float)) and expires_at > 0):
            raise ConfigError(f"expires_at must be a Unix time, not {expires_at!r}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO keys VALUES (?,?,?,?,?,?,?,?,?,NULL)",
                (
                    key_id,
                    _digest(secret),
                    tenant,
                    team,
                    user,
                    tier,
                    json.dumps(list(models)) if models is not None else None,
                    expires_at,
                    now,
                ),
            )
        record = VirtualKey(
            key_id, tenant, team, user, tier, tuple(models) if models is not None else None, expires_at, now, None
        )
        return f"{_PREFIX}{key_id}_{secret}", record

    def rotate(self, key_id: str) -> str:
        """A new secret for the key (the old one stops working at once); its plaintext."""
        secret = secrets.token_urlsafe(32)
        with self._lock:
            changed = self._db.execute(
                "UPDATE keys SET secret_sha256 = ? WHERE id = ? AND revoked_at IS NULL", (_digest(secret), key_id)
            ).rowcount
            self._forget(key_id)
        if not changed:
            raise KeyError(f"no live key {key_id!r}")
        return f"{_PREFIX}{key_id}_{secret}"

    def revoke(self, key_id: str) -> bool:
        """Revokes the key; False if there was no live key of that id."""
        with self._lock:
            changed = self._db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            ).rowcount
            self._forget(key_id)
        return bool(changed)

    def list(self) -> list[VirtualKey]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, tenant, team, user, tier, models, expires_at, created_at, revoked_at "
                "FROM keys ORDER BY created_at"
            ).fetchall()
        return [_record(row) for row in rows]

    def caller(self, presented: str) -> Caller | None:
        """Whose key `presented` is: None when it is malformed, unknown, revoked, expired or
        its secret does not match."""
        now = time.monotonic()
        cached = self._cache.get(presented)
        if cached is not None and cached[0] > now:
            caller = cached[1]
        else:
            caller = self._look_up(presented)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[presented] = (now + self._cache_s, caller)
        return caller

    def _look_up(self, presented: str) -> Caller | None:
        if not presented.startswith(_PREFIX) or len(presented) > 200:
            return None
        key_id, _, secret = presented[len(_PREFIX) :].partition("_")
        if not key_id or not secret:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT id, tenant, team, user, tier, models, expires_at, created_at, revoked_at, "
                "secret_sha256 FROM keys WHERE id = ?",
                (key_id,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[9], _digest(secret)):
            return None
        record = _record(row[:9])
        if record.revoked_at is not None or (record.expires_at is not None and record.expires_at <= time.time()):
            return None
        return record.caller()

    def _forget(self, key_id: str) -> None:
        for presented in [p for p in self._cache if p.startswith(f"{_PREFIX}{key_id}_")]:
            del self._cache[presented]

    def close(self) -> None:
        self._db.close()


def _record(row: Sequence[object]) -> VirtualKey:
    models = json.loads(str(row[5])) if row[5] is not None else None
    return VirtualKey(
        str(row[0]),
        str(row[1]),
        row[2] if row[2] is None else str(row[2]),
        row[3] if row[3] is None else str(row[3]),
        str(row[4]),
        tuple(models) if models is not None else None,
        float(row[6]) if row[6] is not None else None,  # type: ignore[arg-type]
        float(row[7]),  # type: ignore[arg-type]
        float(row[8]) if row[8] is not None else None,  # type: ignore[arg-type]
    )
