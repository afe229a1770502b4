"""Connections to the sidecar over its binary protocol: a blocking pool for sync code, and one
pipelined connection per event loop for asyncio code.

The sync pool hands each call an idle connection (or opens one), so threads never share a
socket and never lock. The async connection sends every request made during one event-loop
iteration as one batched frame and matches answers by request id, so many coroutines share
one connection with many requests in flight.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import weakref
from typing import Any

from .._native import StateError
from ..sidecar.errors import RemoteError, exception_for
from ..sidecar.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    ERROR,
    MAGIC,
    RESERVATION_ID,
    FrameDecoder,
    FrameError,
    Op,
    decode_payload,
    encode_frame,
)

__all__ = ["SidecarUnavailable", "RemoteError", "ConnectionPool", "AsyncConnection", "raise_remote"]

# Requests per frame from the async connection: well under the server's frame size cap.
_MAX_BATCH = 256
_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds


class SidecarUnavailable(StateError):
    """The sidecar could not be reached (not running, socket missing, connection lost, timeout)."""


def raise_remote(result: Any) -> None:
    """Raises the exception an ERROR result stands for, with the attributes it carried (see
    `sidecar.errors`), so `except lt.ExceedsCapacity` works the same in-process and over the
    socket."""
    if isinstance(result, list) and len(result) in (2, 3):
        raise exception_for(*result)
    raise RemoteError("InternalError", repr(result))


def _hello() -> list[Any]:
    return [
        0,
        Op.HELLO,
        {
            "pid": os.getpid(),
            "client": "llmthrottle-python",
            "argv0": os.path.basename(os.environ.get("_", "") or "python"),
        },
    ]


def _set_timeout(sock: socket.socket, timeout: float | None) -> None:
    """Bounds every blocking send, receive and connect by `timeout` seconds, in the kernel
    (SO_SNDTIMEO/SO_RCVTIMEO): a socket with a Python-level timeout polls before each call,
    a syscall per send and per receive. A call that times out raises an OSError
    (BlockingIOError), like `socket.timeout` before it."""
    if timeout is None or timeout <= 0:
        sock.settimeout(timeout)  # None: no limit; 0: non-blocking, as socket.settimeout has it
        return
    seconds, microseconds = divmod(max(1, round(timeout * 1_000_000)), 1_000_000)  # 0 would mean "none"
    value = _TIMEVAL.pack(seconds, microseconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class _SyncConnection:
    """One blocking connection; used by one thread at a time (the pool guarantees it)."""

    __slots__ = ("sock", "_decoder", "_next_id", "_ready")

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _set_timeout(self.sock, timeout)
            self.sock.connect(path)
            # The hello's answer (id 0) is skipped when reading: it costs no round trip.
            self.sock.sendall(MAGIC + encode_frame([_hello()]))
        except BaseException:
            self.sock.close()
            raise
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
        self._next_id = 0
        self._ready: dict[int, list[Any]] = {}

    def call_many(self, requests: list[list[Any]]) -> list[list[Any]]:
        """Sends `[[op, *args], ...]` as one frame; returns `[[id, status, result], ...]` in order."""
        first = self._next_id + 1
        self._next_id += len(requests)
        self.sock.sendall(encode_frame([[first + i, *request] for i, request in enumerate(requests)]))
        wanted = range(first, first + len(requests))
        ready = self._ready
        while True:
            for payload in self._decoder.recv_from(self.sock):
                for response in decode_payload(payload):
                    if response[0] is None:  # the server gave up on this stream
                        raise_remote(response[2])
                    ready[response[0]] = response
                ready.pop(0, None)  # the hello's answer
            if all(i in ready for i in wanted):
                return [ready.pop(i) for i in wanted]

    def call(self, request: list[Any]) -> list[Any]:
        self._next_id = request_id = self._next_id + 1
        self.sock.sendall(encode_frame([[request_id, *request]]))
        while True:
            for payload in self._decoder.recv_from(self.sock):
                for response in decode_payload(payload):
                    if response[0] == request_id:
                        return response  # type: ignore[no-any-return]
                    if response[0] is None:  # the server gave up on this stream
                        raise_remote(response[2])

    def close(self) -> None:
        self.sock.close()


class ConnectionPool:
    """Idle blocking connections to one socket path, reused across calls and threads."""

    def __init__(self, path: str, timeout: float, max_idle: int = 16) -> None:
        self.path = path
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: list[_SyncConnection] = []
        _pools.add(self)

    def call(self, request: list[Any]) -> Any:
        """The result of one request; raises the remote error, or SidecarUnavailable."""
        response = self._run(_SyncConnection.call, request)
        if response[1] == ERROR:
            raise_remote(response[2])
        return response[2]

    def call_many(self, requests: list[list[Any]]) -> list[list[Any]]:
        """`[id, status, result]` per request, sent and answered as one batch."""
        return self._run(_SyncConnection.call_many, requests)  # type: ignore[no-any-return]

    def _run(self, use: Any, argument: Any) -> Any:
        """`use(connection, argument)` on an idle connection (or a new one)."""
        reused = True
        try:
            connection = self._idle.pop()  # list.pop is atomic under the GIL: no lock needed
        except IndexError:
            connection, reused = self._connect(), False
        try:
            result = use(connection, argument)
        except (OSError, EOFError, FrameError) as error:
            connection.close()
            if not reused:
                raise SidecarUnavailable(
                    f"lost the connection to the sidecar at {self.path}: {self._describe(error)}"
                ) from None
            # An idle connection may have died with a previous server process: one fresh try.
            connection = self._connect()
            try:
                result = use(connection, argument)
            except (OSError, EOFError, FrameError) as error2:
                connection.close()
                raise SidecarUnavailable(
                    f"lost the connection to the sidecar at {self.path}: {self._describe(error2)}"
                ) from None
            except BaseException:
                connection.close()  # as below: raised in this handler, the one below misses it
                raise
        except BaseException:
            connection.close()  # e.g. KeyboardInterrupt mid-read: the stream's state is unknown
            raise
        if len(self._idle) < self.max_idle:
            self._idle.append(connection)
        else:
            connection.close()
        return result

    def _connect(self) -> _SyncConnection:
        try:
            return _SyncConnection(self.path, self.timeout)
        except OSError as error:
            raise SidecarUnavailable(
                f"cannot connect to the sidecar at {self.path}: "
                f"{self._describe(error)} (is `llmthrottle serve` running?)"
            ) from None

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, (BlockingIOError, socket.timeout)):
            return f"timed out after {self.timeout}s"  # see _set_timeout
        return str(getattr(error, "strerror", None) or error)

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _forget_after_fork(self) -> None:
        # The child must not read answers meant for the parent on an inherited socket.
        # Closing the child's copy of the descriptor leaves the parent's connection intact.
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.sock.close()


class AsyncConnection(asyncio.Protocol):
    """A pipelined connection for one event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._batch: list[list[Any]] = []
        self._next_id = 0
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, path: str, timeout: float) -> AsyncConnection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(loop.create_unix_connection(lambda: cls(path), path), timeout)
        except (TimeoutError, OSError) as error:
            raise SidecarUnavailable(
                f"cannot connect to the sidecar at {path}: {getattr(error, 'strerror', None) or error!r}"
            ) from None
        assert protocol.transport is not None
        protocol.transport.write(MAGIC + encode_frame([_hello()]))
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(SidecarUnavailable(f"lost the connection to the sidecar at {self.path}"))

    def call(self, request: list[Any]) -> asyncio.Future[Any]:
        """A future for the result of `[op, *args]`, sent with the others of this loop iteration."""
        if self.closed:
            raise SidecarUnavailable(f"the connection to the sidecar at {self.path} is closed")
        self._next_id = request_id = self._next_id + 1
        future = self.loop.create_future()
        self._pending[request_id] = future
        if not self._batch:
            self.loop.call_soon(self._flush)
        self._batch.append([request_id, *request])
        return future

    # A caller cancelled while waiting for an acquire must not leave a reservation held. Its
    # future is usually cancelled with it: the answer then finds it done, and an admitted
    # acquire is given back at once (data_received). When the answer had already arrived,
    # the future is not cancelled and its caller hands it to `abandon`. Cheaper than shielding
    # every call's future against its caller's cancellation.

    def abandon(self, future: asyncio.Future[Any]) -> None:
        """The caller of the acquire answered by `future` gave up: what the sidecar admitted
        for it is cancelled there."""
        if not future.cancelled():
            future.add_done_callback(self._give_back_done)  # runs soon when already done

    def _give_back_done(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._give_back(future.result())

    def _give_back(self, result: Any) -> None:
        """Cancels on the sidecar the reservation of an admitted ACQUIRE_RESULT (the only
        result shaped `[True, ..., reservation_id: str, ...]`) that nobody will settle."""
        if (
            type(result) is list
            and len(result) > RESERVATION_ID
            and result[0] is True
            and type(result[RESERVATION_ID]) is str
            and not self.closed
        ):
            self.call([Op.CANCEL, result[RESERVATION_ID]]).add_done_callback(ignore_result)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if self.transport is None or self.transport.is_closing():
            self.connection_lost(None)
            return
        frames = [encode_frame(batch[i : i + _MAX_BATCH]) for i in range(0, len(batch), _MAX_BATCH)]
        self.transport.write(b"".join(frames))

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self._decoder.feed(data)
            pending = self._pending
            for payload in payloads:
                for request_id, status, result in decode_payload(payload):
                    future = pending.pop(request_id, None)
                    if future is None:
                        continue  # the hello's answer
                    if future.done():  # cancelled with its caller
                        if status != ERROR:
                            self._give_back(result)
                        continue
                    if status == ERROR:
                        try:
                            raise_remote(result)
                        except BaseException as error:
                            future.set_exception(error)
                    else:
                        future.set_result(result)
        except (FrameError, ValueError, TypeError) as error:
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(error)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved


_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


def _after_fork() -> None:
    for pool in list(_pools):
        pool._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork)
