"""Jobs that are not urgent (`batch_api=True`) through the providers' batch APIs: OpenAI's
`/v1/batches` (a JSONL file of requests) and Anthropic's Message Batches, both at half the list
price and finished within the provider's window rather than at the rate limits.

A job's rows go in batches of at most `ROWS_PER_BATCH`. Each batch's id is written to the job
directory the moment the provider answers (`batches.json`), before anything else, so a resume
after a kill polls the batches already submitted instead of paying for them twice; the one
window left is a kill between the provider's answer and that write. A finished batch's results
become the rows' result lines and ledger records (at the batch price), and the batch is marked
collected. Rows refused by the cost cap, bad rows, and rows the batch reported as failed are
reported like any other job's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..ledger import Ledger
from ..ledger.call import call_record, cost_columns
from ..pricing import PriceTable, batch_price_micros
from ..pricing import cost as price_of
from .checkpoint import JobDirectory
from .progress import Progress
from .rows import Row, result_line

__all__ = ["ROWS_PER_BATCH", "ProviderBatches"]

ROWS_PER_BATCH = 10_000
_OPENAI_ENDED = frozenset(("completed", "failed", "expired", "cancelled"))


class ProviderBatches:
    """Submits, polls and collects a job's provider batches (see the module docstring)."""

    def __init__(
        self,
        directory: JobDirectory,
        client: Any,
        ledger: Ledger,
        progress: Progress,
        prices: PriceTable,
        parse: Any,
    ) -> None:
        self.directory = directory
        self.spec = directory.spec
        self.client = client
        self.ledger = ledger
        self.progress = progress
        self.prices = prices
        self.parse = parse
        self.keys = directory.keys

    async def run(self, rows: dict[int, Row], submit: list[Row]) -> None:
        """Collects the batches submitted earlier, then submits `submit` and collects those."""
        for batch in self.directory.batches:
            if not batch.get("collected"):
                await self._collect(batch["id"], rows)
        for start in range(0, len(submit), ROWS_PER_BATCH):
            chunk = submit[start : start + ROWS_PER_BATCH]
            batch_id = await self._submit(chunk)
            self.directory.note_batch(batch_id, [row.index for row in chunk])
            await self._collect(batch_id, rows)

    # ------------------------------------------------------------------ the two APIs

    async def _submit(self, chunk: list[Row]) -> str:
        if self.spec.provider == "anthropic":
            requests = [{"custom_id": str(row.index), "params": row.body} for row in chunk]
            created = await self.client.messages.batches.create(requests=requests)
            return str(created.id)
        lines = [
            json.dumps({"custom_id": str(row.index), "method": "POST", "url": "/v1/chat/completions", "body": row.body})
            for row in chunk
        ]
        upload = await self.client.files.create(
            file=(f"{self.directory.path.name}.jsonl", "\n".join(lines).encode()), purpose="batch"
        )
        created = await self.client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"llmthrottle_job": self.directory.path.name[:512]},
        )
        return str(created.id)

    async def _results(self, batch_id: str) -> list[tuple[int, dict[str, Any] | None, str | None]]:
        """Waits for the batch to end; (row, reply body, error) for each of its requests."""
        while True:
            if self.spec.provider == "anthropic":
                batch = await self.client.messages.batches.retrieve(batch_id)
                if batch.processing_status == "ended":
                    break
            else:
                batch = await self.client.batches.retrieve(batch_id)
                if batch.status in _OPENAI_ENDED:
                    break
            await asyncio.sleep(self.spec.batch_poll_s)
        out: list[tuple[int, dict[str, Any] | None, str | None]] = []
        if self.spec.provider == "anthropic":
            async for entry in await self.client.messages.batches.results(batch_id):
                try:
                    index = int(entry.custom_id)
                except (ValueError, TypeError):
                    continue  # not one of this job's rows
                result = entry.result
                if result.type == "succeeded":
                    out.append((index, result.message.model_dump(), None))
                else:
                    detail = getattr(getattr(result, "error", None), "error", None)
                    out.append((index, None, f"batch {result.type}: {getattr(detail, 'message', '')}"))
            return out
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self.client.files.content(file_id)
            for line in content.text.splitlines():
                # A line that is not a result (damaged, or not ours) is passed over: its row has
                # no result, so a resume sends it again.
                try:
                    entry = json.loads(line)
                    index = int(entry["custom_id"])
                    response, error = entry.get("response") or {}, entry.get("error")
                    status = int(response.get("status_code", 200))
                except (ValueError, TypeError, KeyError, AttributeError):
                    continue
                if error or status >= 400:
                    message = (error.get("message") if isinstance(error, dict) else None) or str(response.get("body"))
                    out.append((index, None, f"batch HTTP {status}: {message[:300]}"))
                else:
                    body = response.get("body")
                    out.append(
                        (
                            index,
                            body if isinstance(body, dict) else None,
                            None if isinstance(body, dict) else "batch: no reply body",
                        )
                    )
        if batch.status != "completed" and not out:
            raise RuntimeError(f"provider batch {batch_id} ended {batch.status} without results")
        return out

    # ------------------------------------------------------------------ results

    async def _collect(self, batch_id: str, rows: dict[int, Row]) -> None:
        for index, reply, error in await self._results(batch_id):
            row = rows.get(index)
            if row is None:
                continue
            self._finish(row, batch_id, reply, error)
        self.directory.note_collected(batch_id)

    def _finish(self, row: Row, batch_id: str, reply: dict[str, Any] | None, error: str | None) -> None:
        model = str((reply or {}).get("model") or (row.body or {}).get("model") or self.spec.model)
        result, columns, micros = None, {}, 0
        if reply is not None:
            try:
                cost = price_of(model, reply.get("usage"), self.spec.provider, prices=self.prices)
                result = self.parse(reply)
            except Exception as failed:  # unpriced model, unreadable usage or reply
                error = f"{type(failed).__name__}: {str(failed)[:300]}"
            else:
                columns, micros = cost_columns(cost), batch_price_micros(cost.total_micros)
        self.ledger.record(
            **call_record(
                self.keys,
                outcome="error" if error is not None else "ok",
                latency_s=None,
                tags={"batch": batch_id, "row": row.index},
                model=model,
                provider=self.spec.provider,
                cost_micros=micros,
                tokens=columns,
            )
        )
        line = result_line(
            row,
            result=result,
            error=error,
            input_tokens=columns.get("input_tokens", 0),
            output_tokens=columns.get("output_tokens", 0),
            cost_micros=micros,
            attempts=1,
        )
        self.directory.add(line)
        self.progress.row(
            failed=error is not None, tokens=line["input_tokens"] + line["output_tokens"], cost_micros=micros
        )
