"""Runs a batch job: every row of its input through a wrapped SDK client (the provider layer's
admission, retries, pricing and ledger), under the job's cost cap, into its job directory, then
the output file in input order.

The cost cap never lets the spend pass `max_cost_usd`: a row is sent only when what was spent,
plus the worst case of every row in flight, plus its own worst case fits under the cap. When the
next row does not fit, no more rows are sent; the rows in flight finish and the job stops with
the rest pending (resume it with a higher cap).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._native import BudgetExceeded, ConfigError, ExceedsCapacity, RateLimited
from ..guard import Guard
from ..ledger import Ledger
from ..limiter import Limiter
from ..pricing import PriceTable, batch_price_micros, worst_case_cost
from ..providers import calls, wrap
from ..providers.attribution import tagged
from ..providers.sending import before_each_send
from .checkpoint import JobDirectory, write_atomically
from .concurrency import AdaptiveConcurrency
from .forecast import Forecast, forecast, usd
from .intents import CALL_TAG, Unfinished, settle_unfinished, unfinished_so_far
from .progress import Progress
from .provider_batch import ProviderBatches
from .rows import BuildRequest, Row, read_rows, result_line
from .spec import JobSpec

__all__ = ["BatchResult", "ParseReply", "Runner", "OUTPUT_COLUMNS"]

ParseReply = Callable[[dict[str, Any]], Any]

OUTPUT_COLUMNS = (
    "row",
    "id",
    "status",
    "result",
    "input_tokens",
    "output_tokens",
    "cost_micros",
    "cost_usd",
    "attempts",
    "latency_s",
    "error",
)


@dataclass(frozen=True)
class BatchResult:
    """How a run of a job ended. `failures` counts failed rows by cause; `pending` rows were not
    run (the cost cap stopped the job, or it was interrupted); `unfinished` counts the calls that
    were in flight when an earlier run died, recorded at their worst case (in `spent_micros`)."""

    job_dir: Path
    output: Path
    rows: int
    succeeded: int
    failed: int
    pending: int
    spent_micros: int
    forecast: Forecast
    failures: dict[str, int] = field(default_factory=dict)
    stopped: str | None = None
    unfinished: Unfinished = Unfinished()

    def summary(self) -> str:
        lines = [
            f"{self.succeeded} of {self.rows} rows succeeded, {self.failed} failed, {self.pending} pending; "
            f"spent {usd(self.spent_micros)} (forecast {usd(self.forecast.expected_micros)} expected with "
            f"replies of {self.forecast.reply_tokens} tokens, {self.forecast.reply_basis}; "
            f"{usd(self.forecast.most_micros)} most); output {self.output}"
        ]
        if self.unfinished.calls:
            lines.append(
                f"{self.unfinished.calls} calls in flight when an earlier run stopped are in the spend as unfinished, "
                f"at their worst case ({usd(self.unfinished.micros)}); their rows ran again"
            )
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        for cause, count in sorted(self.failures.items(), key=lambda item: -item[1]):
            lines.append(f"  {count:6d}  {cause}")
        if self.failed or self.pending:
            again = " --retry-failed" if self.failed else ""
            lines.append(f"to finish: llmthrottle batch resume {self.job_dir}{again}")
        return "\n".join(lines)


class Runner:
    """One run of the job in `directory` (created or resumed)."""

    def __init__(
        self,
        directory: JobDirectory,
        *,
        client: Any = None,
        build: BuildRequest | None = None,
        parse: ParseReply | None = None,
        state: Any = None,
        retry_failed: bool = False,
        show_progress: bool = True,
        prices: PriceTable | None = None,
    ) -> None:
        self.directory = directory
        self.spec = directory.spec
        self.build = build
        self.parse = parse or _default_parse(self.spec.provider)
        self.retry_failed = retry_failed
        self.show_progress = show_progress
        self.prices = prices or PriceTable.default()
        self._given_client = client
        self._state = state
        self._reserved_micros = 0
        self._stopped: str | None = None

    # ------------------------------------------------------------------ the plan

    def rows_to_do(self, rows: list[Row]) -> list[Row]:
        done = self.directory.results
        return [
            row
            for row in rows
            if row.index not in done or (self.retry_failed and done[row.index].get("status") == "error")
        ]

    def _succeeded(self) -> list[dict[str, Any]]:
        return [r for r in self.directory.results.values() if r.get("status") == "ok"]

    def forecast(self, rows: list[Row]) -> Forecast:
        """The forecast of `rows`, expecting replies as long as the job's replies so far."""
        finished = self._succeeded()
        measured = (
            (round(sum(int(r["output_tokens"]) for r in finished) / len(finished)), len(finished)) if finished else None
        )
        return forecast(self.spec, rows, measured=measured, prices=self.prices)

    def refuse_over_cap(self, micros: int, which: str) -> None:
        """Raises `BudgetExceeded` when the forecast's `which` cost, `micros`, plus the spend
        passes the cap."""
        cap = self.spec.max_cost_micros
        if cap is not None and self.directory.spent_micros + micros > cap:
            raise BudgetExceeded(
                f"the job's {which} cost {usd(micros)} (plus {usd(self.directory.spent_micros)} spent) "
                f"exceeds max_cost_usd {usd(cap)}: raise the cap, lower max_tokens, or split the input"
            )

    # ------------------------------------------------------------------ the run

    async def run(self) -> BatchResult:
        rows = list(read_rows(self.spec, self.build))
        todo = self.rows_to_do(rows)
        ledger = Ledger(self.directory.ledger_path)
        try:
            # Calls in flight when an earlier run died are billed as unfinished; the ledger holds
            # every call the job made, so it is the job's spend.
            settle_unfinished(self.directory.intents, ledger, self.directory.keys)
            self.directory.spent_micros = ledger.spend()
            plan = self.forecast(todo)
            pilot = self._pilot_rows(todo)
            # With pilot rows to send, the go/no-go waits for their replies; only a job whose
            # empty replies would pass the cap is refused before them.
            if pilot:
                self.refuse_over_cap(plan.least_micros, "least")
            else:
                self.refuse_over_cap(plan.expected_micros, "expected")
            progress = Progress(len(rows), done=len(rows) - len(todo), enabled=self.show_progress)
            sending = any(row.body is not None for row in todo)
            client = (self._given_client or _sdk_client(self.spec)) if sending else None
            # Rows go one by one through the provider layer, unless the provider's batch API takes
            # them all (but the pilot's).
            one_by_one = client is not None and (bool(pilot) or not self.spec.batch_api)
            wrapped = self._wrapped(client, ledger) if one_by_one else None
            try:
                if pilot:
                    spent_before = self.directory.spent_micros
                    await self._run_rows(wrapped, pilot, progress)
                    sent = {row.index for row in pilot}
                    todo = [row for row in self.rows_to_do(rows) if row.index not in sent]
                    rest = self.forecast(todo)  # with the pilot's replies measured
                    progress.note(f"after the pilot ({len(pilot)} sent), the rest: {rest.describe()}")
                    self.refuse_over_cap(rest.expected_micros, "expected")
                    plan = rest.with_done(pilot, self.directory.spent_micros - spent_before)
                if self.spec.batch_api:
                    await self._run_provider_batches(rows, todo, client, ledger, progress)
                else:  # with only bad rows, there is nothing to send
                    await self._run_rows(wrapped, todo, progress)
            finally:
                progress.close()
                if client is not None:
                    await client.close()
            unfinished = unfinished_so_far(ledger)
        finally:
            ledger.close()
            self.directory.checkpoint()
        output = self.write_output(rows)
        return self._result(rows, plan, output, unfinished)

    def _pilot_rows(self, todo: list[Row]) -> list[Row]:
        """The rows to send before the go/no-go: the first of those to do, until the job has
        `pilot` replies to measure."""
        wanted = self.spec.pilot - len(self._succeeded())
        return [row for row in todo if row.body is not None][: max(0, wanted)]

    async def _run_provider_batches(
        self, rows: list[Row], todo: list[Row], client: Any, ledger: Ledger, progress: Progress
    ) -> None:
        """A job that is not urgent: its rows through the provider's batch API (see
        provider_batch.py), under the same cost cap (the rows of batches already submitted
        reserved first), at the batch price."""
        by_index = {row.index: row for row in rows}
        batches = ProviderBatches(self.directory, client, ledger, progress, self.prices, self.parse)
        if client is not None:
            await batches.find_lost()
        submitted = {i for batch in self.directory.batches if not batch.get("collected") for i in batch["rows"]}
        submit: list[Row] = []
        capped = False
        try:
            for row in todo:
                if row.body is None:
                    self._finish(row, progress, error=row.error or "bad row")
                    continue
                worst = batch_price_micros(self._worst_case(row))
                if row.index in submitted:
                    self._reserved_micros += worst
                elif not capped:
                    capped = not self._fits(worst)  # once the cap is reached, no more rows go
                    if not capped:
                        self._reserved_micros += worst
                        submit.append(row)
            if client is not None:
                await batches.run(by_index, submit)
        finally:
            self._reserved_micros = 0

    def _wrapped(self, client: Any, ledger: Ledger) -> Any:
        """`client` through the provider layer: the job's limits, retries, pricing and ledger."""
        spec = self.spec
        limits: dict[str, Any] = {}
        if spec.rpm is not None:
            limits["requests"] = f"{spec.rpm}/min"
        if spec.tpm is not None:
            limits["tokens"] = f"{spec.tpm}/min"
        # A Guard needs a limiter; with no rate known, the job's own concurrency is the one limit.
        limiter = Limiter(limits or {"concurrency": spec.concurrency}, state=self._state)
        return wrap(
            client,
            guard=Guard(limiter, ledger=ledger, prices=self.prices),
            keys=self.directory.keys,
            state=self._state,
        )

    async def _run_rows(self, client: Any, todo: list[Row], progress: Progress) -> None:
        concurrency = AdaptiveConcurrency(self.spec.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            for row in todo:
                if row.body is None:
                    self._finish(row, progress, error=row.error or "bad row")
                    continue
                await concurrency.acquire()
                worst = self._worst_case(row)
                if not self._fits(worst):
                    await concurrency.release(1, None)
                    break
                self._reserved_micros += worst
                task = asyncio.ensure_future(self._one(client, row, worst, concurrency, progress))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    def _model(self, row: Row) -> str:
        return str((row.body or {}).get("model") or self.spec.model)

    def _worst_case(self, row: Row) -> int:
        assert row.body is not None
        return worst_case_cost(
            self._model(row),
            row.input_tokens,
            row.max_output_tokens,
            provider=self.spec.provider,
            prices=self.prices,
        )

    def _fits(self, worst: int) -> bool:
        cap = self.spec.max_cost_micros
        if cap is None or self.directory.spent_micros + self._reserved_micros + worst <= cap:
            return True
        self._stopped = (
            f"max_cost_usd {usd(cap)} reached: {usd(self.directory.spent_micros)} spent, "
            "the next row could pass the cap"
        )
        return False

    async def _one(
        self, client: Any, row: Row, worst: int, concurrency: AdaptiveConcurrency, progress: Progress
    ) -> None:
        started = time.monotonic()
        attempts, service_s = 1, None
        call = secrets.token_hex(8)
        model = self._model(row)

        def sending(attempt: int) -> None:  # the write-ahead intent (intents.py)
            self.directory.intents.sending(
                row.index,
                call,
                attempt,
                model=model,
                provider=self.spec.provider,
                input_tokens=row.input_tokens,
                max_output_tokens=row.max_output_tokens,
                worst_micros=worst,
            )

        try:
            with calls() as made, tagged(**{CALL_TAG: call, "row": row.index}), before_each_send(sending):
                try:
                    reply = await client.post(_path(self.spec.provider), body=row.body, cast_to=object)
                    result, error = self.parse(reply), None
                except (ExceedsCapacity, BudgetExceeded, RateLimited) as refused:
                    result, error = None, f"{type(refused).__name__}: {refused}"
                except Exception as failed:
                    result, error = None, _failure(failed)
            if made:
                attempts = sum(report.attempts for report in made)
                last = made[-1]
                if error is None:
                    service_s = max(0.0, last.latency_s - last.waited_s)
            self._finish(row, progress, result=result, error=error, reports=made, latency_s=time.monotonic() - started)
        finally:
            self._reserved_micros -= worst
            await concurrency.release(attempts, service_s)

    def _finish(
        self,
        row: Row,
        progress: Progress,
        *,
        result: Any = None,
        error: str | None = None,
        reports: list[Any] | None = None,
        latency_s: float = 0.0,
    ) -> None:
        reports = reports or []
        cost = sum(report.cost_micros for report in reports)
        last = reports[-1] if reports else None
        line = result_line(
            row,
            result=result,
            error=error,
            input_tokens=last.input_tokens if last else 0,
            output_tokens=last.output_tokens if last else 0,
            cost_micros=cost,
            attempts=sum(r.attempts for r in reports),
            latency_s=latency_s,
        )
        self.directory.add(line)
        progress.row(failed=error is not None, tokens=line["input_tokens"] + line["output_tokens"], cost_micros=cost)

    # ------------------------------------------------------------------ the end

    def write_output(self, rows: list[Row]) -> Path:
        """The output file, in input order, atomically replaced."""
        path = Path(self.spec.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        results = self.directory.results
        ordered = [results[row.index] for row in rows if row.index in results]
        text = io.StringIO(newline="")
        if self.spec.format_of_output() == "csv":
            writer = csv.DictWriter(text, fieldnames=OUTPUT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for result in ordered:
                writer.writerow({k: _cell(v) for k, v in result.items()})
        else:
            for result in ordered:
                text.write(json.dumps(result, ensure_ascii=False) + "\n")
        write_atomically(path, text.getvalue())
        return path

    def _result(self, rows: list[Row], plan: Forecast, output: Path, unfinished: Unfinished) -> BatchResult:
        results = self.directory.results
        failed = [results[row.index] for row in rows if results.get(row.index, {}).get("status") == "error"]
        succeeded = sum(1 for row in rows if results.get(row.index, {}).get("status") == "ok")
        causes = Counter(_cause(str(result.get("error"))) for result in failed)
        return BatchResult(
            self.directory.path,
            output,
            len(rows),
            succeeded,
            len(failed),
            len(rows) - succeeded - len(failed),
            self.directory.spent_micros,
            plan,
            dict(causes),
            self._stopped,
            unfinished,
        )


def _sdk_client(spec: JobSpec) -> Any:
    try:
        if spec.provider == "anthropic":
            import anthropic

            return anthropic.AsyncAnthropic(base_url=spec.base_url)
        import openai

        return openai.AsyncOpenAI(base_url=spec.base_url)
    except ImportError:
        raise
    except Exception as error:  # the SDK's own complaint (a missing API key) as a configuration error
        raise ConfigError(f"cannot make the {spec.provider} client: {error}") from None


def _path(provider: str) -> str:
    return "/v1/messages" if provider == "anthropic" else "/chat/completions"


def _default_parse(provider: str) -> ParseReply:
    def openai_text(reply: dict[str, Any]) -> Any:
        return reply["choices"][0]["message"]["content"]

    def anthropic_text(reply: dict[str, Any]) -> Any:
        return "".join(block.get("text", "") for block in reply["content"] if block.get("type") == "text")

    return anthropic_text if provider == "anthropic" else openai_text


def _failure(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        body = getattr(error, "body", None)
        kind = (body.get("error", body) if isinstance(body, dict) else {}) or {}
        code = kind.get("code") or kind.get("type") if isinstance(kind, dict) else None
        return f"HTTP {status} {code or type(error).__name__}: {str(getattr(error, 'message', error))[:300]}"
    return f"{type(error).__name__}: {str(error)[:300]}"


def _cause(error: str) -> str:
    """A failure's cause for the summary: its reason without the details of the row."""
    head = error.split(":", 1)[0]
    if head.startswith(("line ", "row has", "malformed CSV")):
        return "bad row: " + (head if not head.startswith("line ") else error.split(" ", 2)[-1].split(":")[0])
    if head.startswith("missing template field"):
        return "bad row: missing template field"
    return head


def _cell(value: Any) -> Any:
    return "" if value is None else value
