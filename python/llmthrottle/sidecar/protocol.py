"""The sidecar's binary protocol: framing and message shapes, shared by server and client.

A connection that starts with `MAGIC` (b"LTMP" and a version byte) speaks this protocol; any
other first bytes are handed to the HTTP server on the same socket. After the magic, each side
sends frames::

    frame    = length (4 bytes, big-endian, <= max_frame_bytes) + msgpack payload
    request  = payload: [[request_id, op, *args], ...]         # a batch of one or more
    response = payload: [[request_id, status, result], ...]    # status OK or ERROR

A frame is a batch: the server answers each request frame with one response frame holding one
response per request, in order. Request ids let a client keep many frames in flight on one
connection (pipelining) and match answers without relying on order. An ERROR result is
`[kind, message]` or `[kind, message, details]`, where kind names a row of
`llmthrottle.sidecar.errors.ERRORS` and details holds the attributes that row carries.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

import msgpack  # type: ignore[import-untyped]

from .._native import LlmthrottleError

__all__ = [
    "MAGIC",
    "OK",
    "ERROR",
    "Op",
    "FrameDecoder",
    "FrameError",
    "encode_frame",
    "decode_payload",
    "unpackb",
    "RESERVATION_ID",
]

MAGIC = b"LTMP\x01"
OK = 0
ERROR = 1
DEFAULT_MAX_FRAME_BYTES = 1 << 20

_LENGTH = struct.Struct(">I")
_RECV_BYTES = 65536
_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
# One msgpack value from bytes, as both sides read payloads; raises msgpack's own errors (hot
# paths catch them themselves, `decode_payload` turns them into FrameError).
unpackb = functools.partial(msgpack.unpackb, raw=False, strict_map_key=True, use_list=True)


class Op:
    """Operation codes. Arguments after the op, then the result of an OK response."""

    HELLO = 0  # [client_info: map] -> {server, version, pid, uid}
    ACQUIRE = 1  # [namespace, key | [keys], amounts: map, max_wait_s] -> ACQUIRE_RESULT
    COMMIT = 2  # [reservation_id, usage: map] -> None
    CANCEL = 3  # [reservation_id] -> None
    STATUS = 4  # [namespace, key] -> [[dimension, kind, remaining, used, reset_after, capacity]]
    REGISTER = 5  # [namespace, limits | None, rules | None] -> {rules, dimensions, budgets, source}
    PEEK = 6  # [namespace, key | [keys], amounts: map] -> ACQUIRE_RESULT (reservation_id None)
    PING = 7  # [] -> None

    NAMES = {0: "hello", 1: "acquire", 2: "commit", 3: "cancel", 4: "status", 5: "register", 6: "peek", 7: "ping"}


# ACQUIRE_RESULT = [allowed, retry_after, delay, reset_after, limited_by, limited_key,
#                   remaining: map, reservation_id | None, reserved: map | None]
RESERVATION_ID = 7  # where an ACQUIRE_RESULT holds its reservation_id


class FrameError(LlmthrottleError, ValueError):
    """The byte stream is not a valid frame sequence; the connection must be closed."""


def encode_frame(messages: list[Any]) -> bytes:
    """One frame holding a batch of requests or responses."""
    payload: bytes = _pack(messages)
    return _LENGTH.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> Any:
    """A frame's messages. Raises FrameError on bytes that are not one msgpack value."""
    try:
        return unpackb(payload)
    except Exception as error:  # msgpack raises several unrelated types on garbage
        raise FrameError(f"payload is not msgpack: {error}") from None


class FrameDecoder:
    """Splits a byte stream into frame payloads, refusing frames above `max_frame_bytes`
    before buffering them (so a hostile length cannot make anyone allocate it)."""

    __slots__ = ("_buffer", "max_frame_bytes", "_scratch")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        # A bytearray, so a frame trickling in byte by byte costs amortised O(1) per byte.
        self._buffer = bytearray()
        self.max_frame_bytes = max_frame_bytes
        self._scratch: Any = None  # recv_from's receive buffer, made on first use

    def recv_from(self, sock: Any) -> list[bytes]:
        """One `recv_into` from a blocking socket, then `feed`. Raises EOFError when the peer
        closed. Receiving into one reused buffer matters: `sock.recv(n)` allocates n bytes per
        call, which costs more than the round trip itself for a large n."""
        scratch = self._scratch
        if scratch is None:
            scratch = self._scratch = memoryview(bytearray(_RECV_BYTES))
        received = sock.recv_into(scratch)
        if not received:
            raise EOFError("the peer closed the connection")
        return self.feed(scratch[:received])

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: Any) -> list[bytes]:
        """The complete payloads now available (`data`: bytes or a memoryview, not kept).
        Raises FrameError on an oversized frame."""
        pending = self._buffer
        if pending:
            pending += data
            buffer: Any = pending
        else:
            buffer = data  # the common case: whole frames in one read, no copy
        payloads = []
        offset = 0
        end = len(buffer)
        limit = self.max_frame_bytes
        while end - offset >= 4:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length > limit:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {limit} bytes")
            if end - offset - 4 < length:
                break
            payloads.append(bytes(buffer[offset + 4 : offset + 4 + length]))
            offset += 4 + length
        if buffer is pending:
            del pending[:offset]
        elif offset < end:
            pending += buffer[offset:]
        return payloads
