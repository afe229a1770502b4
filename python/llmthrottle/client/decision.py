"""Decisions and reservations answered by the sidecar. They mirror `llmthrottle.Decision` and
`llmthrottle.Reservation` attribute for attribute, so code written against the in-process
limiter works unchanged."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..limiter import OpenReservation, SettlesOnExit, describe
from ..sidecar.protocol import RESERVATION_ID, Op
from .connection import RemoteError, SidecarUnavailable

if TYPE_CHECKING:
    from .limiter import SidecarLimiter

__all__ = ["SidecarDecision", "SidecarReservation", "OpenReservation"]

_log = logging.getLogger("llmthrottle")


class SidecarDecision:
    """What the sidecar decided. Truthy when the call was admitted."""

    __slots__ = ("allowed", "retry_after", "delay", "reset_after", "limited_by", "limited_key", "remaining")

    def __init__(self, result: list[Any]) -> None:
        (
            self.allowed,
            self.retry_after,
            self.delay,
            self.reset_after,
            self.limited_by,
            self.limited_key,
            self.remaining,
        ) = result[:7]

    def __bool__(self) -> bool:
        return bool(self.allowed)

    def __repr__(self) -> str:
        return describe(self)


class SidecarReservation(SettlesOnExit, SidecarDecision):
    """An admitted call held by the sidecar. `commit(**usage)` reconciles it with real usage,
    `cancel()` refunds it; as a context manager it cancels when the block raises and commits
    as reserved otherwise.

    Usage may also carry ledger fields (`model`, `provider`, `tenant`, `user`, `team`,
    `feature`, `cost_micros`, `input_tokens`, `output_tokens`, ...): the sidecar records them
    with the commit. When the sidecar cannot be reached to settle, a warning is logged and the
    reservation counts as settled: the sidecar commits it as reserved when it expires."""

    __slots__ = ("reserved", "_limiter", "_id", "_settled")
    #: The sidecar records each commit in its ledger (a Guard without a ledger sends the
    #: record's columns with the commit).
    records_usage = True

    def __init__(self, result: list[Any], limiter: SidecarLimiter) -> None:
        super().__init__(result)
        self._id: str = result[RESERVATION_ID]
        self.reserved: dict[str, Any] = result[RESERVATION_ID + 1]
        self._limiter = limiter
        self._settled = False

    @property
    def reservation_id(self) -> str:
        return self._id

    def commit(self, **usage: Any) -> None:
        """Reconciles with real usage, e.g. `commit(tokens=913)`."""
        self._begin()
        self._settle([Op.COMMIT, self._id, usage])

    def cancel(self) -> None:
        """The call never happened: refunds everything and releases concurrency slots."""
        self._begin()
        self._settle([Op.CANCEL, self._id])

    async def commit_async(self, **usage: Any) -> None:
        """`commit` without blocking the event loop."""
        self._begin()
        sidecar = self._limiter._sidecar
        connection = sidecar._open_connection() or await sidecar._async_connection()
        await self._settle_async(connection.call([Op.COMMIT, self._id, usage]))

    async def cancel_async(self) -> None:
        """`cancel` without blocking the event loop."""
        self._begin()
        sidecar = self._limiter._sidecar
        connection = sidecar._open_connection() or await sidecar._async_connection()
        await self._settle_async(connection.call([Op.CANCEL, self._id]))

    def _settle(self, request: list[Any]) -> None:
        try:
            self._limiter._sidecar._pool.call(request)
        except SidecarUnavailable as error:
            self._unreachable(error)
        except RemoteError as error:
            self._remote(error)
        except BaseException:
            self._settled = False  # e.g. a bad amount: the caller may settle again
            raise

    async def _settle_async(self, future: Any) -> None:
        try:
            await future
        except SidecarUnavailable as error:
            self._unreachable(error)
        except RemoteError as error:
            self._remote(error)
        except BaseException:
            self._settled = False
            raise

    def _unreachable(self, error: SidecarUnavailable) -> None:
        self._limiter._sidecar._note_unavailable(error, "settle")
        _log.warning(
            "could not settle reservation %s (%s); the sidecar commits it as reserved when it expires", self._id, error
        )

    def _remote(self, error: RemoteError) -> None:
        if error.kind != "UnknownReservation":
            self._settled = False
            raise error
        _log.warning(
            "reservation %s was unknown to the sidecar (expired or from a previous server process): %s",
            self._id,
            error.message,
        )

    def __del__(self) -> None:
        # Like the engine's Reservation, one dropped unsettled is committed as reserved (its
        # concurrency slots come back). No I/O here (a finaliser may run anywhere): the id is
        # queued and sent with the sidecar's next request.
        if not self._settled:
            self._settled = True
            self._limiter._sidecar._abandoned.append(self._id)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f" reservation={self._id}>"
