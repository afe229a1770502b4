"""Write-ahead intents: no request a batch job sent goes missing from its ledger, whatever kills
the runner.

A call's ledger record is written when its reply is read, so a call in flight when the runner
is SIGKILLed would be billed by the provider yet absent from the ledger. So each row's call gets
a random id (the `batch_call` tag of its ledger record) and, right before each request of the
call leaves (after admission: `providers.sending.before_each_send`), one line is appended to
`intents.jsonl` in the job directory and flushed:

    {"row": 7, "call": "9f0c...", "attempt": 1, "model": "gpt-4o-mini", "provider": "openai",
     "input_tokens": 41, "max_output_tokens": 8, "worst_micros": 11, "at": 1718000000.0}

One buffered write and a flush per request: durable against a kill at once (the kernel holds
it), against power loss at the job's next checkpoint (which fsyncs this file with the results).

On resume, every call with intent lines but no ledger record was in flight when the runner
died. The provider may have billed it, so it is recorded with outcome `unfinished` at the worst
case it was admitted for (`ledger.call.unfinished_record`, the rule Guard applies to a call left
without its reply), tagged with its row, call and attempts: it counts in the job's spend (so
`max_cost_usd` still holds) and in the summary, and its row, which has no result, runs again.
The record's id is derived from the call's, so settling twice (a kill while settling) records
it once; then the file starts afresh.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._native import ConfigError
from ..ledger import Ledger
from ..ledger.call import UNFINISHED, unfinished_record

__all__ = ["CALL_TAG", "IntentLog", "Unfinished", "settle_unfinished", "unfinished_so_far"]

#: The ledger tag that ties a call's record to its intent lines.
CALL_TAG = "batch_call"


class IntentLog:
    """The job's `intents.jsonl`, open for appending (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "ab")

    def sending(
        self,
        row: int,
        call: str,
        attempt: int,
        *,
        model: str,
        provider: str,
        input_tokens: int,
        max_output_tokens: int,
        worst_micros: int,
    ) -> None:
        """Records that attempt `attempt` of call `call` (row `row`) is about to be sent."""
        line = {
            "row": row,
            "call": call,
            "attempt": attempt,
            "model": model,
            "provider": provider,
            "input_tokens": input_tokens,
            "max_output_tokens": max_output_tokens,
            "worst_micros": worst_micros,
            "at": time.time(),
        }
        self._file.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        self._file.flush()  # one write of the whole line: in the kernel before the request leaves

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def by_call(self) -> dict[str, dict[str, Any]]:
        """Each call's last intent line (the attempt most recently sent), by call id."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        whole = data.rfind(b"\n") + 1  # a line cut by a kill mid-write: its request never left
        found: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(data[:whole].splitlines(), 1):
            try:
                intent = json.loads(line)
                whole_line = all(type(intent[name]) is int for name in ("row", "attempt", "worst_micros"))
                if not whole_line or not isinstance(intent["model"], str):
                    raise ValueError(line)
                found[str(intent["call"])] = intent
            except (ValueError, KeyError, TypeError):
                raise ConfigError(
                    f"{self.path}: line {number} is not an intent; the job directory is damaged"
                ) from None
        return found

    def start_afresh(self) -> None:
        """Empties the file once every call in it has its ledger record."""
        self._file.flush()
        self._file.truncate(0)  # appending goes on at the new end


@dataclass(frozen=True)
class Unfinished:
    """Calls recorded as unfinished over the job's life, and what they were charged."""

    calls: int = 0
    micros: int = 0


def settle_unfinished(intents: IntentLog, ledger: Ledger, keys: list[str]) -> int:
    """Records every call of `intents` that has no ledger record as `unfinished` (see the module
    docstring), then empties the log; returns how many were recorded."""
    pending = intents.by_call()
    if not pending:
        intents.start_afresh()  # at most a line cut short, whose request never left
        return 0
    # A call's record is written after its first intent line (a minute's margin for the clock).
    since = min(float(intent.get("at") or 0) for intent in pending.values()) - 60
    recorded = {group[CALL_TAG] for group in ledger.aggregate([CALL_TAG], since=since)}
    settled = 0
    for call, intent in pending.items():
        if call in recorded:
            continue
        ledger.record(
            **unfinished_record(
                keys,
                model=str(intent["model"]),
                provider=intent.get("provider"),
                reserved_tokens=(int(intent.get("input_tokens", 0)), int(intent.get("max_output_tokens", 0))),
                worst_case_micros=int(intent["worst_micros"]),
                latency_s=None,
                tags={"row": int(intent["row"]), CALL_TAG: call, "attempts": int(intent["attempt"])},
            ),
            id=f"{UNFINISHED}-{call}",
            time=float(intent.get("at") or time.time()),
        )
        settled += 1
    ledger.flush()
    intents.start_afresh()
    return settled


def unfinished_so_far(ledger: Ledger) -> Unfinished:
    """The calls the job's ledger holds as unfinished, and their cost."""
    totals = ledger.aggregate([], outcome=UNFINISHED)
    return Unfinished(totals[0]["calls"], totals[0]["cost_micros"]) if totals else Unfinished()
