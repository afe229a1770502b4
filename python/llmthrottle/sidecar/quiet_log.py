"""Logging of clients' mistakes that no client can turn into a flood.

A malformed frame, a body cut short, a peer gone mid-request: each is the client's problem, so
each is logged at DEBUG, and at INFO only as one summary line per interval with the count of
each kind seen since the last line. However fast a client misbehaves, it adds at most one line
per interval to the log.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

__all__ = ["ClientMistakes", "client_mistakes"]


class ClientMistakes:
    """Counts client mistakes by kind; logs a summary at most once per `interval_s`."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._counts: Counter[str] = Counter()
        self._next_summary = time.monotonic()

    def note(self, kind: str, detail: str) -> None:
        self._logger.debug("%s: %s", kind, detail)
        self._counts[kind] += 1
        now = time.monotonic()
        if now >= self._next_summary:
            self._next_summary = now + self._interval_s
            summary = ", ".join(f"{count} {kind}" for kind, count in sorted(self._counts.items()))
            self._counts.clear()
            self._logger.info("client mistakes since the last summary: %s (details at DEBUG)", summary)


#: The sidecar's one counter: the binary and HTTP protocols share its summary line.
client_mistakes = ClientMistakes(logging.getLogger("llmthrottle.sidecar"))
