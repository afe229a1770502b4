"""Settlements that could not reach Redis, kept until it answers again (see `RedisState`).

Each kept call gets an operation id, and its replay a marker cell (`SET NX`, kept a day, in the
slot of the cell it updates) that makes it apply at most once: a replay sent twice (a reply
lost after the server applied it, two processes replaying one journal) changes nothing the
second time. At most `limit` calls are kept in memory; past that the oldest go.

With a `directory` (`RedisState(replay_dir=...)`), every kept call is also appended to this
process's journal there, one JSON line written and fsynced before the caller goes on, so what
a process kept outlives it. A journal is locked (flock) by the process that writes it for as
long as that process lives. A process that finds a journal nobody holds (its writer died:
when a `RedisState` is made, and whenever Redis is reachable again) takes it over: its lines
join this process's own journal and queue, then the file goes. A damaged line (a write cut
short by the crash, stray bytes) is passed over, with one log line per file. A journal is
removed once everything in it was replayed, and rewritten with what is left when most of its
lines were (it holds at most twice `limit` lines).

Files: `<directory>/<host>-<pid>-<random>.journal`, mode 0600, in a directory of mode 0700
(created, or tightened, so). The directory must be on a local disk: flock over NFS is not
reliable.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from .._native import ConfigError
from .cells import marker_name
from .script import Call

__all__ = ["ReplayQueue"]

_log = logging.getLogger("llmthrottle")

Kept = tuple[str, Call]  # (operation id, the call that replays it, marker included)
_STALE_TEMPORARY_S = 60.0


class ReplayQueue:
    """Kept settlements, oldest first, and (with a directory) their journal."""

    def __init__(self, limit: int, directory: str | os.PathLike[str] | None = None) -> None:
        self.items: deque[Kept] = deque(maxlen=limit)
        self.limit = limit
        self.dropped = 0
        self.lock = threading.Lock()
        self.journal = None if directory is None else Journal(Path(directory))

    def __len__(self) -> int:
        return len(self.items)

    def keep(self, call: Call) -> None:
        """Keeps a settlement Redis could not take (journaled before this returns)."""
        operation = uuid.uuid4().hex
        replay = Call([*call.keys, marker_name(call.keys[0], operation)], [call.args[0], operation, *call.args[2:]])
        with self.lock:
            if len(self.items) == self.limit:
                self.dropped += 1
            self.items.append((operation, replay))
            if self.journal is not None:
                if self.journal.lines >= 2 * self.limit:
                    self.journal.rewrite(list(self.items))
                else:
                    self.journal.append([(operation, replay)])

    def head(self) -> Kept | None:
        with self.lock:
            return self.items[0] if self.items else None

    def done(self, operation: str) -> None:
        """The oldest kept call was replayed (or refused for good)."""
        with self.lock:
            if self.items and self.items[0][0] == operation:
                self.items.popleft()

    def settled(self) -> None:
        """A replay pass ended: the journal goes when nothing is left, and is rewritten with
        what is left when most of its lines were replayed."""
        journal = self.journal
        if journal is None:
            return
        with self.lock:
            if not self.items:
                journal.remove()
            elif journal.lines > 2 * len(self.items) + 100:
                journal.rewrite(list(self.items))

    def adopt(self) -> int:
        """Takes over the journals of processes that died; returns how many calls it took."""
        if self.journal is None:
            return 0
        with self.lock:
            taken = self.journal.adopt()
            self.dropped += max(0, len(self.items) + len(taken) - self.limit)
            self.items.extend(taken)
        return len(taken)

    def after_fork(self) -> None:
        """In a forked child: the parent's journal stays the parent's (the child keeps its own
        copy of the queue in memory; replaying it again is harmless)."""
        self.lock = threading.Lock()
        if self.journal is not None:
            self.journal = self.journal.for_child()

    def close(self) -> None:
        """Removes the journal when nothing is left in it, else leaves it (unlocked) to the
        next process that starts on the directory."""
        if self.journal is not None:
            with self.lock:
                if self.items:
                    self.journal.release()
                else:
                    self.journal.remove()


class Journal:
    """This process's journal file in a replay directory."""

    def __init__(self, directory: Path, *, prepare: bool = True) -> None:
        if prepare:
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                if directory.stat().st_mode & 0o077:
                    directory.chmod(0o700)  # a journal names keys: for this user only
            except (OSError, TypeError, ValueError) as error:
                raise ConfigError(f"replay_dir {str(directory)!r} cannot be used: {error}") from None
            if not os.access(directory, os.W_OK | os.X_OK):
                raise ConfigError(f"replay_dir {str(directory)!r} is not writable")
        self.directory = directory
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lines = 0
        self._fd: int | None = None
        self._failed = False

    @property
    def path(self) -> Path:
        return self.directory / f"{self.name}.journal"

    def append(self, kept: list[Kept]) -> bool:
        """Appends `kept` and waits for the disk; False when it could not (logged)."""
        try:
            if self._fd is None:
                self._create(kept)
                return True
            _write_all(self._fd, b"".join(_encode(item) for item in kept))
            os.fsync(self._fd)
            self.lines += len(kept)
            self._failed = False
            return True
        except OSError as error:
            self._write_failed(error)
            return False

    def rewrite(self, kept: list[Kept]) -> None:
        """Replaces the journal with `kept`, atomically (a crash leaves the old one whole)."""
        try:
            self._create(kept)
        except OSError as error:
            self._write_failed(error)

    def _create(self, kept: list[Kept]) -> None:
        # Written and locked under a name no other process takes, then renamed into place: a
        # journal is never seen unlocked while its writer lives.
        temporary = self.directory / f"{self.name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, b"".join(_encode(item) for item in kept))
            os.fsync(fd)
            os.replace(temporary, self.path)
            _sync_directory(self.directory)
        except BaseException:
            os.close(fd)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self.lines, self._failed = fd, len(kept), False

    def _write_failed(self, error: OSError) -> None:
        if not self._failed:  # one line per failing streak, not per call
            self._failed = True
            _log.warning(
                "llmthrottle: cannot write the Redis replay journal in %s (%s); what Redis could not "
                "take is kept in memory only",
                self.directory,
                error,
            )

    def remove(self) -> None:
        """Everything in it was replayed: the journal goes."""
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:  # left behind: the next process takes it, and replays nothing twice
                pass
            os.close(self._fd)
            self._fd, self.lines = None, 0

    def release(self) -> None:
        """Closes (and so unlocks) the journal, leaving it for the next process."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self.lines = None, 0

    def for_child(self) -> Journal:
        """A journal of its own for a forked child (closing the inherited descriptor leaves the
        parent's lock in place: flock belongs to the open file, which the parent keeps)."""
        if self._fd is not None:
            os.close(self._fd)
        return Journal(self.directory, prepare=False)

    def adopt(self) -> list[Kept]:
        """Takes the journals nobody holds: their lines are appended here, then they go."""
        taken: list[Kept] = []
        try:
            names = sorted(entry.name for entry in os.scandir(self.directory))
        except OSError as error:
            _log.warning("llmthrottle: cannot read the Redis replay directory %s (%s)", self.directory, error)
            return taken
        for name in names:
            if name.startswith(self.name) or not name.endswith((".journal", ".tmp")):
                continue
            path = self.directory / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as error:
                _log.warning("llmthrottle: cannot take over the Redis replay journal %s (%s)", path, error)
                continue
            try:  # the lock is held until the file is gone, so no other process takes it too
                adopted = _take(fd, path)
                if adopted is None:
                    continue
                if adopted:
                    if not self.append(adopted):
                        continue  # not on this process's disk: theirs stays for the next one
                    taken += adopted
                path.unlink(missing_ok=True)
            except OSError as error:
                _log.warning("llmthrottle: cannot take over the Redis replay journal %s (%s)", path, error)
            finally:
                os.close(fd)
        return taken


def _take(fd: int, path: Path) -> list[Kept] | None:
    """The calls in another process's journal, open on `fd`, once it is ours to take: None
    while its writer lives (or when it is gone)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None  # its writer is alive
    try:
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            return None  # replaced (or taken) since it was listed
    except FileNotFoundError:
        return None
    if path.suffix == ".tmp":
        # A rewrite its writer never finished (its journal has every line), unless it is one
        # being written this moment (created, and not yet locked).
        return [] if time.time() - os.fstat(fd).st_mtime > _STALE_TEMPORARY_S else None
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return _decode_journal(b"".join(chunks), path)


def _encode(item: Kept) -> bytes:
    operation, call = item
    return (json.dumps({"op": operation, "keys": call.keys, "args": call.args}, separators=(",", ":")) + "\n").encode()


def _decode_journal(data: bytes, path: Path) -> list[Kept]:
    kept: list[Kept] = []
    damaged = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        item = _decode(line)
        if item is None:
            damaged += 1
        else:
            kept.append(item)
    if damaged:
        _log.warning("llmthrottle: passed over %d damaged line(s) in the Redis replay journal %s", damaged, path)
    return kept


def _decode(line: bytes) -> Kept | None:
    """One journal line, or None when it is not one llmthrottle wrote: a settle call whose
    last key is the marker of its operation."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # stray bytes may nest past the parser's depth
        return None
    if not isinstance(record, dict):
        return None
    operation, keys, args = record.get("op"), record.get("keys"), record.get("args")
    if not (
        isinstance(operation, str)
        and operation
        and isinstance(keys, list)
        and isinstance(args, list)
        and len(args) >= 12
        and len(args) % 6 == 0
        and len(keys) == len(args) // 6
        and all(isinstance(key, str) for key in keys)
        and all(isinstance(arg, (str, int)) and not isinstance(arg, bool) for arg in args)
        and args[0] == "settle"
        and args[1] == operation
        and keys[-1] == marker_name(keys[0], operation)
    ):
        return None
    return operation, Call(keys, args)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
