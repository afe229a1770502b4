"""A batch job's directory: what it is, what it has done, and the lock that keeps one runner on it.

    job.json          the JobSpec (written once, atomically)
    results.jsonl     one line per finished row, appended and flushed as each row ends
    intents.jsonl     one line before each request leaves (see intents.py), so a request in
                      flight at a kill is still recorded in the ledger on resume
    checkpoint.json   rows done and spend, written atomically (after an fsync of the results
                      and the intents) every `checkpoint_rows` rows or `checkpoint_s` seconds
    batches.json      the provider batches of a `batch_api` job: before each is created, its
                      token, rows and time; its id as soon as the provider answers; all written
                      atomically, so a resume polls them (or finds by its token a batch whose
                      id was never written) instead of paying twice
    ledger/           the usage ledger of every call the job made
    lock              held (flock) by the runner

Why this survives a SIGKILL at any instant: a result line is one `write` of a complete line, so
after a kill the file holds whole lines and at most one partial last line, which `open` cuts
off. A row is done when its line is in the file; a row in flight at the kill has no line and
runs again on resume (its first call may have been billed: its intent line puts it in the
ledger, at its worst case, and in the job's spend). When a row appears
twice (a failed row retried with `retry_failed`), its last line is its result, so the output
holds every row exactly once.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from .._native import ConfigError
from .intents import IntentLog
from .spec import JobSpec

__all__ = ["JobDirectory", "write_atomically"]


class JobDirectory:
    """An open job directory (see the module docstring); `results` maps row index to its line."""

    def __init__(
        self, path: Path, spec: JobSpec, results: dict[int, dict[str, Any]], spent_micros: int, lock: int
    ) -> None:
        self.path = path
        self.spec = spec
        self.results = results
        self.spent_micros = spent_micros  # every line's calls, a retried row's earlier lines too
        self._lock = lock
        self._file = open(path / "results.jsonl", "ab", buffering=0)
        self.intents = IntentLog(path / "intents.jsonl")
        self._since_checkpoint = 0
        self._checkpoint_at = time.monotonic()

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(cls, path: Path, spec: JobSpec) -> JobDirectory:
        """A new job at `path` (empty or absent); an existing job there is a `ConfigError`."""
        path.mkdir(parents=True, exist_ok=True)
        if (path / "job.json").exists():
            raise ConfigError(
                f"{path} already holds a job: resume it (llmthrottle batch resume {path}), "
                "or choose another job directory"
            )
        lock = _lock(path)
        write_atomically(path / "job.json", spec.to_json())
        (path / "results.jsonl").touch()
        return cls(path, spec, {}, 0, lock)

    @classmethod
    def open(cls, path: Path) -> JobDirectory:
        """The job at `path`, with the results it holds (a partial last line cut off)."""
        try:
            text = (path / "job.json").read_text()
        except FileNotFoundError:
            raise ConfigError(f"{path} holds no batch job (no job.json)") from None
        spec = JobSpec.from_json(text, str(path / "job.json"))
        lock = _lock(path)
        try:
            results, spent = _read_results(path / "results.jsonl")
        except BaseException:
            os.close(lock)
            raise
        return cls(path, spec, results, spent, lock)

    # ------------------------------------------------------------------ while running

    def add(self, result: dict[str, Any]) -> None:
        """Records one finished row (durable at the next checkpoint, visible to a resume at once)."""
        line = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        self._file.write(line)  # one write of a whole line; unbuffered
        self.results[int(result["row"])] = result
        self.spent_micros += int(result.get("cost_micros") or 0)
        self._since_checkpoint += 1
        if (
            self._since_checkpoint >= self.spec.checkpoint_rows
            or time.monotonic() - self._checkpoint_at >= self.spec.checkpoint_s
        ):
            self.checkpoint()

    def checkpoint(self) -> None:
        os.fsync(self._file.fileno())
        self.intents.sync()
        summary = {
            "rows_done": len(self.results),
            "spent_micros": self.spent_micros,
            "at": time.time(),
            "results_bytes": self._file.tell(),
        }
        write_atomically(self.path / "checkpoint.json", json.dumps(summary))
        self._since_checkpoint = 0
        self._checkpoint_at = time.monotonic()

    def close(self) -> None:
        try:
            self.checkpoint()
        finally:
            self._file.close()
            self.intents.close()
            os.close(self._lock)

    @property
    def ledger_path(self) -> Path:
        return self.path / "ledger"

    @property
    def keys(self) -> list[str]:
        """The keys of every call the job makes (its limits and ledger records)."""
        return [f"batch:{self.path.name}"]

    @property
    def batches(self) -> list[dict[str, Any]]:
        """The provider batches of this job: `{"token", "at", "rows", "id", "collected"}` each,
        `id` None while the provider's answer to its creation is not known."""
        try:
            data = json.loads((self.path / "batches.json").read_text())
        except FileNotFoundError:
            return []
        except ValueError:
            raise ConfigError(f"{self.path / 'batches.json'} is damaged") from None
        return list(data) if isinstance(data, list) else []

    def note_batch_intent(self, token: str, rows: list[int]) -> None:
        """Records, before it is created, a provider batch carrying `token` (durable first)."""
        entry = {"token": token, "at": time.time(), "rows": rows, "id": None, "collected": False}
        write_atomically(self.path / "batches.json", json.dumps([*self.batches, entry]))

    def note_batch(self, token: str, batch_id: str) -> None:
        """Records the id the provider gave the batch carrying `token` (durable before anything
        else happens)."""
        batches = [{**b, "id": batch_id} if b.get("token") == token else b for b in self.batches]
        write_atomically(self.path / "batches.json", json.dumps(batches))

    def forget_batch(self, token: str) -> None:
        """Drops the intent of a batch the provider never created: its rows are to do again."""
        batches = [b for b in self.batches if b.get("token") != token]
        write_atomically(self.path / "batches.json", json.dumps(batches))

    def note_collected(self, batch_id: str) -> None:
        """Marks a provider batch's results as taken into the results (after an fsync of them)."""
        self.checkpoint()
        batches = [{**b, "collected": True} if b.get("id") == batch_id else b for b in self.batches]
        write_atomically(self.path / "batches.json", json.dumps(batches))


def _lock(path: Path) -> int:
    descriptor = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise ConfigError(f"the job in {path} is being run by another process") from None
    return descriptor


def _read_results(path: Path) -> tuple[dict[int, dict[str, Any]], int]:
    """(row index -> its last line, the cost of every line)."""
    results: dict[int, dict[str, Any]] = {}
    spent = 0
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return results, spent
    whole = data.rfind(b"\n") + 1
    if whole < len(data):  # a line cut by a kill mid-write: that row was not finished
        with open(path, "r+b") as file:
            file.truncate(whole)
    for number, line in enumerate(data[:whole].splitlines(), 1):
        try:
            result = json.loads(line)
            index = int(result["row"])
            spent += int(result.get("cost_micros") or 0)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{path}: line {number} is not a result; the job directory is damaged") from None
        results[index] = result
    return results, spent


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
