"""What a batch job will cost and how long it will take, before it starts: the exact token count
of every request (`lt.estimate`), priced at three reply lengths, and the time the provider's
limits need to admit it all.

- least: every reply empty (the input alone);
- expected: every reply as long as the replies measured so far (the job's pilot rows, or the
  rows a resumed job has finished), else `expected_output_tokens`, else half of `max_tokens`
  (capped by each row's max tokens);
- most: every reply as long as its max tokens allow.

Each row is priced as its own call (rounded up once, as the ledger will charge it), so the
forecast and the spend add up the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from ..pricing import PriceTable, TokenUsage, batch_price_micros
from ..report.model import format_usd
from .rows import Row
from .spec import JobSpec

__all__ = ["Forecast", "forecast", "usd"]


def usd(micros: int) -> str:
    """Integer micro-dollars for display, to the micro-dollar: 40000 -> '$0.040000'."""
    return "$" + format_usd(micros)


@dataclass(frozen=True)
class Forecast:
    """A job's forecast (see the module docstring); costs in integer micro-dollars."""

    rows: int
    bad_rows: int
    requests: int
    input_tokens: int
    max_output_tokens: int
    expected_output_tokens: int
    least_micros: int
    expected_micros: int
    most_micros: int
    seconds: float | None
    reply_tokens: int = 0  # the reply length the expected figures assume
    reply_basis: str = ""  # where that length comes from

    def with_done(self, done: list[Row], micros: int) -> Forecast:
        """This forecast (of the rows still to do) plus rows already sent, `done`, at what they
        cost, `micros`: the forecast of a whole run after its pilot rows."""
        return dataclasses.replace(
            self,
            rows=self.rows + len(done),
            requests=self.requests + len(done),
            input_tokens=self.input_tokens + sum(row.input_tokens for row in done),
            max_output_tokens=self.max_output_tokens + sum(row.max_output_tokens for row in done),
            least_micros=self.least_micros + micros,
            expected_micros=self.expected_micros + micros,
            most_micros=self.most_micros + micros,
        )

    def describe(self) -> str:
        time = (
            "unknown until the provider announces its limits (or pass rpm/tpm)"
            if self.seconds is None
            else _duration(self.seconds)
        )
        return (
            f"{self.requests} requests ({self.bad_rows} bad rows of {self.rows}), {self.input_tokens} input tokens; "
            f"cost {usd(self.least_micros)} least, {usd(self.expected_micros)} expected "
            f"(replies of {self.reply_tokens} tokens, {self.reply_basis}), {usd(self.most_micros)} most; time {time}"
        )


def forecast(
    spec: JobSpec,
    rows: Iterable[Row],
    *,
    measured: tuple[int, int] | None = None,
    prices: PriceTable | None = None,
) -> Forecast:
    """The forecast of `rows` (those of `spec`'s input still to do). `measured` is (the mean
    reply length, over how many rows) of the replies the job has had, which the expected figures
    then assume instead of the spec's."""
    table = prices or PriceTable.default()
    if measured is not None:
        expected_length, basis = (
            max(0, measured[0]),
            f"the mean of {measured[1]} row{'s' if measured[1] != 1 else ''} sent",
        )
    elif spec.expected_output_tokens is not None:
        expected_length, basis = spec.expected_output_tokens, "as given"
    else:
        expected_length, basis = max(1, spec.max_tokens // 2), "assumed: half of max_tokens"
    count = bad = requests = input_tokens = max_output = expected_output = 0
    least = expected = most = 0
    counted_tokens = 0  # toward the provider's token limit, as it counts them at admission
    model = spec.model
    for row in rows:
        count += 1
        if row.body is None:
            bad += 1
            continue
        requests += 1
        row_model = str(row.body.get("model") or model)
        row_expected = min(expected_length, row.max_output_tokens)
        input_tokens += row.input_tokens
        max_output += row.max_output_tokens
        expected_output += row_expected
        least += _price(table, row_model, spec, row.input_tokens, 0)
        expected += _price(table, row_model, spec, row.input_tokens, row_expected)
        most += _price(table, row_model, spec, row.input_tokens, row.max_output_tokens)
        counted_tokens += row.input_tokens + (row.max_output_tokens if spec.provider == "openai" else row_expected)
    return Forecast(
        count,
        bad,
        requests,
        input_tokens,
        max_output,
        expected_output,
        least,
        expected,
        most,
        _seconds(spec, requests, counted_tokens),
        expected_length,
        basis,
    )


def _price(table: PriceTable, model: str, spec: JobSpec, input_tokens: int, output_tokens: int) -> int:
    usage = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)
    micros = table.cost(model, usage, spec.provider).total_micros
    return batch_price_micros(micros) if spec.batch_api else micros


def _seconds(spec: JobSpec, requests: int, tokens: int) -> float | None:
    """Minutes the limits need beyond their first full minute (a limit admits its whole quota at
    once, then its rate), in seconds; None when no limit is known."""
    if spec.batch_api or (spec.rpm is None and spec.tpm is None):
        return None  # a provider batch finishes within its completion window, at its own pace
    needed = [0.0]
    if spec.rpm is not None:
        needed.append(max(0, requests - spec.rpm) / spec.rpm * 60)
    if spec.tpm is not None:
        needed.append(max(0, tokens - spec.tpm) / spec.tpm * 60)
    return max(needed)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"about {seconds:.0f}s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"
