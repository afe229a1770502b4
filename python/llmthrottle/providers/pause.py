"""What one worker learns of a provider's limits, every worker sharing the state knows: a 429
(or an announced `remaining: 0`) pauses every process on the same `state` until the provider's
reset, so one worker's 429 never becomes N workers' 429s.

The pause is a limit like any other, on the state the calls are limited on (in-process,
`SharedState`, the sidecar): a `pause_ms` dimension refilling at 1,000 per second with a burst
of one. An attempt only looks (`peek`): it takes nothing, so a paused key costs its callers
no throughput. A 429 that says "retry after R seconds" charges R·1000 beyond the burst, which
puts the key's next admission R seconds out. A call therefore waits exactly as long as the
longest pause any worker recorded, and no lock or message is needed.

Tried and dropped: each attempt taking one millisecond of the limit (a `try_acquire`), which
spaced the workers' first attempts after a pause, but capped every provider key at 1,000
attempts a second on a state: a gateway at 1,000 rps to one deployment queued behind it.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import weakref
from typing import Any, cast

from .._native import InProcessState, Reservation
from ..limiter import Limiter
from .headers import credential
from .protocol import Endpoint, Kind, base_path

__all__ = ["ProviderPause", "azure_account", "limit_scope", "pause_key"]

_NAMESPACE = "llmthrottle.provider-pause"
_LIMITS = {"pause_ms": {"rate": "1000/s", "burst": 1}}
_MAX_PAUSE_S = 3600.0
_MAX_OWN_KEYS = 10_000


@functools.lru_cache(maxsize=256)
def _account(authorization: str) -> str:
    return hashlib.sha256(authorization.encode()).hexdigest()[:12]


def pause_key(origin: str, authorization: str | None, model: str) -> str:
    """The scope a provider's limits apply to: where the request went (see `_origin`), API key
    (hashed) and model."""
    return f"{origin}|{_account(authorization or '')}|{model}"[:250]


def azure_account(headers: Any) -> str | None:
    """The credential an Azure OpenAI request's limits are scoped by, beside its host and
    deployment. Azure counts a deployment's limits whoever calls, so an Entra ID token (a JWT,
    renewed every hour and different in every process) is left out: every worker shares the
    deployment's limits and pauses. An `api-key` (or a static key sent as a bearer) is kept, as
    API Management may give each subscription key limits of its own."""
    key = headers.get("api-key")
    if key:
        return str(key)
    bearer = headers.get("authorization")
    return None if not bearer or bearer[7:10] == "eyJ" else str(bearer)  # "Bearer eyJ...": a JWT


@functools.lru_cache(maxsize=256)
def _origin(host: str, port: int | None, path: str, kind: Kind | None) -> str:
    """Where a request went, as its provider's limits see it: two servers on one host (another
    port, another base path: two local model servers, a proxy's routes) are two providers. The
    base path is the request's `path` before the endpoint of `kind` (None: left out). A long one
    is kept by its digest, so that the key still names the model."""
    where = (host if port is None else f"{host}:{port}") + ("" if kind is None else base_path(kind, path))
    return where if len(where) <= 96 else f"{where[:64]}#{hashlib.sha256(where.encode()).hexdigest()[:16]}"


def limit_scope(
    endpoint: Endpoint, host: str, port: int | None, path: str, headers: Any, name: str, cache_scope: str
) -> tuple[str, str]:
    """(the key of the provider's limits and pauses, the cache scope) of a request to `host`,
    `port` (None: the scheme's own) and `path` naming the model or deployment `name`: a cached
    reply is only ever the same caller's, from the same server. Azure's limits belong to its
    deployments, named apart from the path (chat and responses share a deployment's limits)."""
    presented = credential(headers)
    if endpoint.azure_deployment is None:
        return pause_key(_origin(host, port, path, endpoint.kind), presented, name), cache_scope
    key = pause_key(_origin(host, port, "", None), azure_account(headers), name)
    return key, f"{cache_scope}|{_account(presented or '')}"


class _PausedKeys:
    """The keys ever paused on a state that only this process reaches (an `InProcessState`, or
    none): every attempt asks, and most keys are never paused, so a key not among them needs no
    look. `keys` is None once more than _MAX_OWN_KEYS were paused: then every attempt looks."""

    __slots__ = ("keys",)

    def __init__(self) -> None:
        self.keys: set[str] | None = set()

    def add(self, key: str) -> None:
        keys = self.keys
        if keys is not None:
            keys.add(key)
            if len(keys) > _MAX_OWN_KEYS:
                self.keys = None


# Every ProviderPause on one in-process state (wrapped clients given the same limiter, say)
# shares its paused keys, for as long as the state lives.
_ON_STATE: weakref.WeakKeyDictionary[InProcessState, _PausedKeys] = weakref.WeakKeyDictionary()
_ON_STATE_LOCK = threading.Lock()


def _paused_keys(state: Any) -> _PausedKeys | None:
    """The paused keys of `state`, or None for a state other processes reach (whose pauses
    are only known by looking)."""
    if state is None:
        return _PausedKeys()  # a state made here, seen by nobody else
    if type(state) is not InProcessState:
        return None
    with _ON_STATE_LOCK:
        paused = _ON_STATE.get(state)
        if paused is None:
            paused = _ON_STATE[state] = _PausedKeys()
        return paused


class ProviderPause:
    """Pauses shared through `state` (None: this process only)."""

    def __init__(self, state: Any = None) -> None:
        self.limiter = Limiter(_LIMITS, state=state, namespace=_NAMESPACE)
        self._paused = _paused_keys(state)

    def wait_s(self, key: str) -> float:
        """0.0 when `key` may be tried now, else seconds to wait."""
        paused = self._paused
        if paused is not None and (keys := paused.keys) is not None and key not in keys:
            return 0.0
        decision = self.limiter.peek(key, pause_ms=1)
        return 0.0 if decision else max(0.001, float(decision.retry_after))

    def pause(self, key: str, seconds: float) -> None:
        """No attempt on `key` anywhere on this state for `seconds` (at most an hour)."""
        if self._paused is not None:
            self._paused.add(key)  # before the charge: a look that misses the key saw no pause yet
        seen = self.limiter.peek(key, pause_ms=1)
        already = 0.0 if seen else float(seen.retry_after)
        # Pauses overlap, they do not add up: only the part beyond the current pause is charged.
        milliseconds = int((min(max(seconds, 0.0), _MAX_PAUSE_S) - already) * 1000)
        if milliseconds <= 0:
            return
        reservation = self.limiter.try_acquire(key, pause_ms=0)
        if reservation:
            cast(Reservation, reservation).commit(pause_ms=milliseconds)  # usage beyond the burst: pushes the key out
