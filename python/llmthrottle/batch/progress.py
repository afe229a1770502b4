"""A batch job's live progress line on stderr: rows done, rows/s, tokens/min, spend, ETA, errors.

On a terminal the line is redrawn in place a few times a second; elsewhere (a log, CI) one line
is written every `every_s` seconds, so a long job neither floods nor goes silent.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .forecast import usd

__all__ = ["Progress"]


class Progress:
    """Counts of a running job and their display (see the module docstring)."""

    def __init__(
        self,
        total: int,
        *,
        done: int = 0,
        stream: TextIO | None = None,
        enabled: bool = True,
        every_s: float | None = None,
    ) -> None:
        self.total = total
        self.done = done
        self.errors = 0
        self.tokens = 0
        self.spent_micros = 0
        self._done_at_start = done
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self._every_s = every_s if every_s is not None else (0.2 if self._tty else 10.0)
        self._started = time.monotonic()
        self._shown_at = 0.0

    def row(self, *, failed: bool, tokens: int, cost_micros: int) -> None:
        self.done += 1
        self.errors += failed
        self.tokens += tokens
        self.spent_micros += cost_micros
        if self._enabled and time.monotonic() - self._shown_at >= self._every_s:
            self.show()

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self._started)
        rows_per_s = (self.done - self._done_at_start) / elapsed
        left = self.total - self.done
        eta = "--" if rows_per_s <= 0 else _clock(left / rows_per_s)
        return (
            f"{self.done}/{self.total} rows  {rows_per_s:.1f} rows/s  {self.tokens / elapsed * 60:,.0f} tokens/min  "
            f"{usd(self.spent_micros)}  ETA {eta}  {self.errors} errors"
        )

    def note(self, text: str) -> None:
        """A line of its own (the forecast after the pilot rows), when progress is shown."""
        if self._enabled:
            self._stream.write(("\r\x1b[2K" if self._tty else "") + text + "\n")
            self._stream.flush()

    def show(self) -> None:
        self._shown_at = time.monotonic()
        if self._tty:
            self._stream.write("\r\x1b[2K" + self.line())
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._enabled:
            self.show()
            if self._tty:
                self._stream.write("\n")
                self._stream.flush()


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{rest:02d}s"
