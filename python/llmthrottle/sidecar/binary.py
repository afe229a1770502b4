"""The binary (msgpack) protocol's server side: an asyncio Protocol on the raw connection.

Why a bare Protocol and not aiohttp or streams: every request is answered synchronously inside
`data_received` (an engine decision takes about a microsecond, so there is nothing to await),
which avoids creating a task or future per request. All frames that arrived in one read are
answered with one `transport.write`, so a pipelining client gets batched answers for free.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .access import Peer
from .errors import ServiceError, details_of, kind_of
from .protocol import ERROR, OK, FrameDecoder, FrameError, Op, encode_frame, unpackb
from .quiet_log import client_mistakes
from .service import Service

__all__ = ["BinaryConnection"]

_log = logging.getLogger("llmthrottle.sidecar")
_perf = time.perf_counter
_monotonic = time.monotonic
_NAMES = Op.NAMES


# Ops that reach the limiter state (a round trip when the state is remote).
_STATE_OPS = frozenset((Op.ACQUIRE, Op.COMMIT, Op.CANCEL, Op.STATUS, Op.PEEK))


class BinaryConnection(asyncio.Protocol):
    """One client connection speaking the binary protocol (after the magic bytes)."""

    def __init__(
        self, service: Service, peer: Peer, max_frame_bytes: int, on_close: Callable[[BinaryConnection], None]
    ) -> None:
        self.service = service
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.last_active = _monotonic()
        self._decoder = FrameDecoder(max_frame_bytes)
        self._on_close = on_close
        # Frames being answered on a remote state's threads (see data_received).
        self.answering: set[asyncio.Future[bytes]] = set()
        self._metrics = service.metrics
        # op -> its latency histogram in the metrics, looked up once per connection
        self._latency: dict[int, Any] = {}
        self._handlers: dict[int, Callable[[list[Any]], Any]] = {
            Op.ACQUIRE: self._acquire,
            Op.COMMIT: self._commit,
            Op.CANCEL: self._cancel,
            Op.STATUS: self._status,
            Op.REGISTER: self._register,
            Op.PEEK: self._peek,
            Op.PING: self._ping,
            Op.HELLO: self._hello,
        }

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        # Reservations of this connection stay held until settled or expired (see service.py).
        self._on_close(self)

    # Backpressure: a client that sends without reading must not grow our write buffer
    # without bound, so stop reading its requests until the buffer drains.
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_active = _monotonic()
        try:
            payloads = self._decoder.feed(data)
        except FrameError as error:
            self._fail(str(error))
            return
        if not payloads:
            return
        handle = self._handle
        out: list[bytes] = []
        executor = self.service.executor
        for payload in payloads:
            try:
                batch = unpackb(payload)
            except Exception as error:  # msgpack raises several unrelated types on garbage
                self._fail(f"payload is not msgpack: {error}", out)
                return
            if type(batch) is not list or not batch:
                self._fail("a frame must hold a non-empty array of requests", out)
                return
            if executor is not None and any(type(r) is list and len(r) > 1 and r[1] in _STATE_OPS for r in batch):
                # A remote state: a frame that needs it is answered from the state's threads
                # when its round trips are done (answers carry their request ids, so order is
                # free); pings and the rest are answered here at once.
                answering = asyncio.get_running_loop().run_in_executor(executor, self._answer, batch)
                self.answering.add(answering)
                answering.add_done_callback(self._write_answer)
                continue
            out.append(encode_frame([handle(batch[0])] if len(batch) == 1 else [handle(r) for r in batch]))
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])  # type: ignore[union-attr]

    def _answer(self, batch: list[Any]) -> bytes:
        return encode_frame([self._handle(request) for request in batch])

    def _write_answer(self, done: asyncio.Future[bytes]) -> None:
        self.answering.discard(done)
        transport = self.transport
        if transport is not None and not transport.is_closing() and not done.cancelled():
            transport.write(done.result())

    def _fail(self, reason: str, answered: list[bytes] | None = None) -> None:
        """A broken byte stream cannot be resynchronised: answer with an error frame (id None)
        and close, after the answers to the frames before it. Other connections are unaffected."""
        self._metrics.bad_frames += 1
        client_mistakes.note("malformed binary frames", f"closing connection from pid {self.peer.pid}: {reason}")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(answered or ()) + encode_frame([[None, ERROR, ["BadRequest", reason]]]))
            self.transport.close()

    def _handle(self, request: Any) -> list[Any]:
        started = _perf()
        if type(request) is not list or len(request) < 2 or type(request[1]) is not int:
            self._metrics.error("binary", "BadRequest")
            request_id = request[0] if type(request) is list and request else None
            return [
                request_id if _is_id(request_id) else None,
                ERROR,
                ["BadRequest", "a request is [request_id, op, *args] with an integer op"],
            ]
        op = request[1]
        handler = self._handlers.get(op)
        try:
            if handler is None:
                raise ServiceError("BadRequest", f"unknown op {op!r}")
            result = handler(request)
        except Exception as error:
            kind = kind_of(error)
            if kind == "InternalError":
                _log.exception("binary request %r failed", request[:2])
            self._metrics.error("binary", kind)
            details = details_of(error, kind)
            return [request[0], ERROR, [kind, str(error), details] if details else [kind, str(error)]]
        histogram = self._latency.get(op)
        if histogram is None:
            histogram = self._latency[op] = self._metrics.histogram("binary", _NAMES[op])
        histogram.observe(_perf() - started)
        return [request[0], OK, result]

    # Each handler receives the whole request [id, op, *args].

    def _acquire(self, request: list[Any]) -> list[Any]:
        _, _, namespace, key, amounts, max_wait = _args(request, 6)
        peer = self.peer
        if peer.may_use is not None:
            denied_key = peer.check_key(key)
            if denied_key is not None:
                raise ServiceError("AccessDenied", f"uid {peer.uid} may not use key {denied_key!r}")
        decision, reservation_id = self.service.acquire(namespace, key, amounts, max_wait, peer.uid)
        return acquire_result(decision, reservation_id)

    def _commit(self, request: list[Any]) -> None:
        _, _, reservation_id, usage = _args(request, 4)
        self.service.commit(reservation_id, usage, self.peer.uid, self.peer)

    def _cancel(self, request: list[Any]) -> None:
        _, _, reservation_id = _args(request, 3)
        self.service.cancel(reservation_id, self.peer.uid)

    def _status(self, request: list[Any]) -> list[list[Any]]:
        _, _, namespace, key = _args(request, 4)
        if self.peer.check_key(key) is not None:
            raise ServiceError("AccessDenied", f"uid {self.peer.uid} may not use key {key!r}")
        return self.service.status(namespace, key)

    def _peek(self, request: list[Any]) -> list[Any]:
        _, _, namespace, key, amounts = _args(request, 5)
        if self.peer.check_key(key) is not None:
            raise ServiceError("AccessDenied", f"uid {self.peer.uid} may not use key {key!r}")
        return acquire_result(self.service.peek(namespace, key, amounts), None)

    def _register(self, request: list[Any]) -> dict[str, Any]:
        _, _, namespace, limits, rules = _args(request, 5)
        return self.service.register(namespace, limits, rules, may_admin=self.peer.may_admin)

    def _ping(self, request: list[Any]) -> None:
        return None

    def _hello(self, request: list[Any]) -> dict[str, Any]:
        _, _, info = _args(request, 3)
        if isinstance(info, dict):
            self.peer.info = {str(k): v for k, v in list(info.items())[:16]}
        return {"server": "llmthrottle", "version": 1, "pid": os.getpid(), "uid": self.peer.uid}


def acquire_result(decision: Any, reservation_id: str | None) -> list[Any]:
    """The wire form of a decision (see protocol.py's ACQUIRE_RESULT)."""
    if reservation_id is not None:
        return [
            True,
            0.0,
            decision.delay,
            decision.reset_after,
            None,
            None,
            decision.remaining,
            reservation_id,
            decision.reserved,
        ]
    return [
        decision.allowed,
        decision.retry_after,
        decision.delay,
        decision.reset_after,
        decision.limited_by,
        decision.limited_key,
        decision.remaining,
        None,
        None,
    ]


def _args(request: list[Any], count: int) -> list[Any]:
    if len(request) != count:
        raise ServiceError("BadRequest", f"op {request[1]} takes {count - 2} arguments, got {len(request) - 2}")
    return request


def _is_id(value: Any) -> bool:
    return type(value) is int or type(value) is str
