"""Where the ledger puts what it cannot store, so that one bad record never stops the rest.

A record that passed `Ledger.record()` but that SQLite still refuses, and an intact journal
frame that is not a record this version writes, are appended to `quarantine.jsonl` in the
ledger's directory (one JSON object per line: time, source, reason, the payload as text) and
counted. Nothing is dropped silently: an operator can inspect and re-import the lines.
"""

from __future__ import annotations

import json
import os
import threading
import time

__all__ = ["QUARANTINE_NAME", "Quarantine"]

QUARANTINE_NAME = "quarantine.jsonl"


class Quarantine:
    """Appends put-aside records to one side file (the ledger's mode, 0600 by default) and
    counts them."""

    def __init__(self, directory: str, mode: int = 0o600) -> None:
        self.path = os.path.join(directory, QUARANTINE_NAME)
        self.mode = mode
        self.count = 0
        self._lock = threading.Lock()

    def add(self, source: str, reason: str, payload: bytes | str) -> None:
        text = payload.decode("utf-8", "backslashreplace") if isinstance(payload, bytes) else payload
        line = (
            json.dumps({"time": time.time(), "source": source, "reason": reason, "payload": text}, ensure_ascii=True)
            + "\n"
        )
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if self.mode != 0o600:
                    os.fchmod(fd, self.mode)  # past the umask
                os.write(fd, line.encode())
            finally:
                os.close(fd)
            self.count += 1
