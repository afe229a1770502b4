"""The append-only journal: the durable half of the ledger.

A frame is one line: 8 hex digits of payload length, 8 hex digits of its CRC-32, the payload
(compact JSON, which never contains a raw newline) and a newline. `Journal.append` hands a whole
frame to the kernel with one `os.write` on an O_APPEND descriptor, so once it returns the frame
survives SIGKILL of the process (not power loss, unless `sync=True`). A crash mid-write leaves at
most one torn frame at the tail; the CRC finds it, and the newline lets a reader resynchronise
past a damaged frame anywhere else.

A journal is owned by the process holding an exclusive `flock` on it. The kernel drops that lock
when the owner dies however it dies, so "the lock can be taken" means "the owner is gone and the
journal may be replayed". A journal is created under a temporary name and renamed only once
locked, so a recovering process can never mistake a journal being born for an orphan.
"""

from __future__ import annotations

import fcntl
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Journal", "ReplayStats", "encode_frame", "iter_frames", "read_all", "try_claim"]

_HEADER_BYTES = 16
JOURNAL_PREFIX = "journal-"
JOURNAL_SUFFIX = ".log"


def encode_frame(payload: bytes) -> bytes:
    """One journal line for `payload`."""
    return b"%08x%08x" % (len(payload), zlib.crc32(payload)) + payload + b"\n"


@dataclass
class ReplayStats:
    """What a replay found besides good frames."""

    frames: int = 0
    corrupt_frames: int = 0
    torn_tail_bytes: int = 0


def iter_frames(data: bytes, start: int, stats: ReplayStats) -> Iterator[tuple[bytes, int]]:
    """Yield (payload, end offset) of each intact frame in `data[start:]`.

    A frame that fails its checks is skipped up to the next newline; bytes after the last newline
    that do not form a whole frame are a torn tail (a write cut short by a crash) and are ignored.
    """
    pos, end = start, len(data)
    while pos < end:
        newline = data.find(b"\n", pos)
        if newline < 0:
            stats.torn_tail_bytes = end - pos
            return
        header = data[pos : pos + _HEADER_BYTES]
        try:
            length = int(header[:8], 16)
            crc = int(header[8:], 16)
        except ValueError:
            length, crc = -1, -1
        payload_end = pos + _HEADER_BYTES + length
        if length >= 0 and payload_end == newline and zlib.crc32(data[pos + _HEADER_BYTES : payload_end]) == crc:
            stats.frames += 1
            yield data[pos + _HEADER_BYTES : payload_end], newline + 1
            pos = newline + 1
        elif length >= 0 and payload_end < newline and zlib.crc32(data[pos + _HEADER_BYTES : payload_end]) == crc:
            # An intact frame whose own newline was damaged: the next frame starts right after
            # it, so it is not lost with this one.
            stats.frames += 1
            stats.corrupt_frames += 1
            yield data[pos + _HEADER_BYTES : payload_end], payload_end + 1
            pos = payload_end + 1
        else:
            stats.corrupt_frames += 1
            pos = newline + 1


class Journal:
    """One process's open journal file, locked for its lifetime."""

    __slots__ = ("path", "name", "fd", "size", "checkpointed", "_sync")

    def __init__(self, directory: str, stem: str, sync: bool, mode: int = 0o600) -> None:
        self.name = f"{JOURNAL_PREFIX}{stem}{JOURNAL_SUFFIX}"
        self.path = os.path.join(directory, self.name)
        creating = os.path.join(directory, f".creating-{stem}")
        fd = os.open(creating, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if mode != 0o600:
                os.fchmod(fd, mode)  # past the umask, which would drop the group's bits
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(creating, self.path)
        except BaseException:
            os.close(fd)
            os.unlink(creating)
            raise
        self.fd = fd
        self.size = 0
        self.checkpointed = 0
        self._sync = sync

    def append(self, frame: bytes) -> int:
        """Write a whole frame; return the journal size after it. Caller holds the write lock."""
        view = memoryview(frame)
        while view:
            # A regular-file write is complete in practice; the loop covers the rare short write
            # (e.g. a signal or a nearly full disk) so no half frame is ever left behind by us.
            written = os.write(self.fd, view)
            view = view[written:]
        if self._sync:
            os.fdatasync(self.fd)
        self.size += len(frame)
        return self.size

    def remove(self) -> None:
        """Delete the file, then drop the lock (in that order: nobody may replay it meanwhile)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def try_claim(path: str) -> int | None:
    """Open and lock a journal whose owner may be dead; return its fd, or None if its owner is
    alive or it is already gone (replayed and deleted by another process)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if os.fstat(fd).st_nlink == 0:  # replayed and unlinked while we waited for the lock
        os.close(fd)
        return None
    return fd


def read_all(fd: int) -> bytes:
    """The whole content of an open file."""
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)
