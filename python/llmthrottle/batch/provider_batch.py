"""Jobs that are not urgent (`batch_api=True`) through the providers' batch APIs: OpenAI's
`/v1/batches` (a JSONL file of requests) and Anthropic's Message Batches, both at half the list
price and finished within the provider's window rather than at the rate limits.

A job's rows go in batches of at most `ROWS_PER_BATCH`. No batch is paid for twice, whenever the
runner is killed:

- before a batch is created, a random token, its rows and the time are written to the job
  directory (`batches.json`); the token goes with the batch: in its `metadata` (OpenAI) and in
  every request's `custom_id`, `<token>_<row>` (Anthropic has no metadata; 16 + 1 + at most 10
  characters, within its 64);
- the batch's id is written the moment the provider answers, so a resume polls it;
- a resume that finds a token without an id (killed between the provider's answer and that
  write) lists the provider's batches created since the token was written, newest first, and
  adopts the one carrying it: OpenAI's by its metadata; Anthropic's by the custom_ids of its
  results, among the batches with as many requests (results exist once a batch has ended, so
  the resume waits for those candidates). A token no batch carries was never created: its rows
  are submitted again.

A finished batch's results become the rows' result lines and ledger records (at the batch
price), and the batch is marked collected. Rows refused by the cost cap, bad rows, and rows the
batch reported as failed are reported like any other job's.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from ..ledger import Ledger
from ..ledger.call import call_record, cost_columns
from ..pricing import PriceTable, batch_price_micros
from ..pricing import cost as price_of
from .checkpoint import JobDirectory
from .progress import Progress
from .rows import Row, result_line

__all__ = ["ROWS_PER_BATCH", "TOKEN_METADATA", "ProviderBatches"]

ROWS_PER_BATCH = 10_000
#: The OpenAI batch metadata key that carries a batch's token.
TOKEN_METADATA = "llmthrottle_token"
#: How long after its token was written a batch may still appear at the provider (a create
#: whose bytes left just before the kill): a resume sooner than this lists again at its end.
CREATE_GRACE_S = 5.0
#: Margin for the clocks of the runner and the provider when listing batches since a token.
_CLOCK_MARGIN_S = 60.0
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

    async def find_lost(self) -> None:
        """Settles every batch whose creation was intended but whose id was never written: the
        provider's batch carrying its token is adopted, or, when none does, the intent is
        dropped and its rows are to do again."""
        for batch in self.directory.batches:
            if batch.get("id") is not None or batch.get("collected"):
                continue
            token, since = str(batch["token"]), float(batch["at"])
            found = await self._find(token, len(batch["rows"]), since)
            if found is None and time.time() < since + CREATE_GRACE_S:
                await asyncio.sleep(since + CREATE_GRACE_S - time.time())
                found = await self._find(token, len(batch["rows"]), since)
            if found is None:
                self.directory.forget_batch(token)
            else:
                self.directory.note_batch(token, found)

    async def run(self, rows: dict[int, Row], submit: list[Row]) -> None:
        """Collects the batches submitted earlier (after `find_lost`), then submits `submit` and
        collects those."""
        for batch in self.directory.batches:
            if not batch.get("collected") and batch.get("id") is not None:
                await self._collect(batch["id"], batch.get("token"), rows)
        for start in range(0, len(submit), ROWS_PER_BATCH):
            token = secrets.token_hex(8)
            await self._collect(await self._submit(token, submit[start : start + ROWS_PER_BATCH]), token, rows)

    async def _submit(self, token: str, chunk: list[Row]) -> str:
        """Creates a batch of `chunk` carrying `token`, the token written before and the id after
        (see the module docstring); returns the id."""
        self.directory.note_batch_intent(token, [row.index for row in chunk])
        batch_id = await self._create(token, chunk)
        self.directory.note_batch(token, batch_id)
        return batch_id

    # ------------------------------------------------------------------ the two APIs

    async def _create(self, token: str, chunk: list[Row]) -> str:
        if self.spec.provider == "anthropic":
            requests = [{"custom_id": f"{token}_{row.index}", "params": row.body} for row in chunk]
            created = await self.client.messages.batches.create(requests=requests)
            return str(created.id)
        lines = [
            json.dumps(
                {"custom_id": f"{token}_{row.index}", "method": "POST", "url": "/v1/chat/completions", "body": row.body}
            )
            for row in chunk
        ]
        upload = await self.client.files.create(
            file=(f"{self.directory.path.name}.jsonl", "\n".join(lines).encode()), purpose="batch"
        )
        created = await self.client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"llmthrottle_job": self.directory.path.name[:512], TOKEN_METADATA: token},
        )
        return str(created.id)

    async def _find(self, token: str, requests: int, since: float) -> str | None:
        """The id of the provider's batch carrying `token`, created after `since`, or None."""
        oldest = since - _CLOCK_MARGIN_S
        if self.spec.provider != "anthropic":
            async for listed in self.client.batches.list(limit=100):
                if (listed.metadata or {}).get(TOKEN_METADATA) == token:
                    return str(listed.id)
                if listed.created_at < oldest:
                    break  # newest first: the rest were created before the token was written
            return None
        candidates = []
        async for message_batch in self.client.messages.batches.list(limit=100):
            if message_batch.created_at.timestamp() < oldest:
                break
            counts = message_batch.request_counts
            if (counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired) == requests:
                candidates.append(str(message_batch.id))
        for batch_id in candidates:  # a batch's custom_ids can be read once it has ended
            await self._ended(batch_id)
            results = await self.client.messages.batches.results(batch_id)
            try:
                async for entry in results:
                    if str(entry.custom_id).startswith(f"{token}_"):
                        return batch_id
                    break
            finally:
                await results.close()
        return None

    async def _ended(self, batch_id: str) -> Any:
        """Waits for the batch to end; returns it as the provider last described it."""
        while True:
            if self.spec.provider == "anthropic":
                batch = await self.client.messages.batches.retrieve(batch_id)
                if batch.processing_status == "ended":
                    return batch
            else:
                batch = await self.client.batches.retrieve(batch_id)
                if batch.status in _OPENAI_ENDED:
                    return batch
            await asyncio.sleep(self.spec.batch_poll_s)

    async def _results(self, batch_id: str, token: str | None) -> list[tuple[int, dict[str, Any] | None, str | None]]:
        """Waits for the batch to end; (row, reply body, error) for each of its requests."""
        batch = await self._ended(batch_id)
        out: list[tuple[int, dict[str, Any] | None, str | None]] = []
        if self.spec.provider == "anthropic":
            async for entry in await self.client.messages.batches.results(batch_id):
                index = _row_of(entry.custom_id, token)
                if index is None:
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
                    index = _row_of(entry["custom_id"], token)
                    if index is None:
                        continue
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

    async def _collect(self, batch_id: str, token: str | None, rows: dict[int, Row]) -> None:
        for index, reply, error in await self._results(batch_id, token):
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


def _row_of(custom_id: Any, token: str | None) -> int | None:
    """The row of a request's `custom_id`, `<token>_<row>` (a bare row for a batch without a
    token, as jobs once wrote them); None for a request that is not one of this batch's."""
    prefix, _, row = str(custom_id).rpartition("_")
    if prefix != (token or ""):
        return None
    try:
        return int(row)
    except ValueError:
        return None
