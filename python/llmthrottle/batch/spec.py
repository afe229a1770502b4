"""What a batch job is: its input, how each row becomes a request, where it goes, and its limits.
A `JobSpec` is saved in the job's directory when the job starts, so that `resume` runs the same
job again without being told it twice."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from .._native import ConfigError
from .callables import check_name

__all__ = ["JobSpec", "Provider"]

Provider = Literal["openai", "anthropic"]

_FORMATS = ("csv", "jsonl")


@dataclass(frozen=True)
class JobSpec:
    """One batch job.

    - `input`: a CSV (header row) or JSONL file. With `template`, each row's fields fill the
      template (`str.format` fields: ``"Classify: {text}"``) into one user message; without it,
      each JSONL line is a request body, or ``{"custom_id": ..., "body": {...}}`` as the
      providers' batch files hold them.
    - `output`: the result file, CSV or JSONL by its extension (or `output_format`): one row per
      input row, in input order, with its result, usage, cost, attempts and error.
    - `provider`, `model`, `max_tokens`, `system`: the request every row makes; `base_url`
      points the SDK elsewhere (a gateway, the fake provider).
    - `rpm`, `tpm`: the provider's limits when known (else they are learned from its headers).
    - `max_cost_usd`: the job is refused when its expected cost exceeds this, and stops before
      its spend could pass it.
    - `expected_output_tokens`: the reply length the forecast expects (default: half of
      `max_tokens`; a resumed job uses what its finished rows returned).
    - `pilot`: how many rows to send first, before the go/no-go: the expected cost and time are
      then forecast from the mean length of their replies (their results are kept, not sent
      again). 0: no pilot.
    - `concurrency`: the most calls in flight (adapted down on 429s and rising latency).
    - `checkpoint_rows`, `checkpoint_s`: how often progress is made durable.
    - `build`, `parse`: a function named `package.module:function` that makes a row's request
      body from its fields (instead of the template), or a row's result from the reply (instead
      of its text); kept with the job, so `resume` uses them again.
    - `batch_api`: the job is not urgent: its rows go to the provider's batch API (OpenAI
      `/v1/batches`, Anthropic Message Batches) at half price, finished within the provider's
      window (24 h) rather than at the rate limits; `batch_poll_s` is how often it is asked.
    """

    input: str
    output: str
    model: str
    provider: Provider = "openai"
    template: str | None = None
    system: str | None = None
    max_tokens: int = 256
    base_url: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_cost_usd: float | None = None
    expected_output_tokens: int | None = None
    pilot: int = 0
    concurrency: int = 16
    checkpoint_rows: int = 100
    checkpoint_s: float = 5.0
    output_format: Literal["csv", "jsonl"] | None = None
    build: str | None = None
    parse: str | None = None
    batch_api: bool = False
    batch_poll_s: float = 30.0

    def __post_init__(self) -> None:
        if self.provider not in ("openai", "anthropic"):
            raise ConfigError(f"provider must be 'openai' or 'anthropic', not {self.provider!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model must be a non-empty string")
        for name in ("max_tokens", "concurrency", "checkpoint_rows"):
            _positive_int(name, getattr(self, name))
        for name in ("rpm", "tpm", "expected_output_tokens"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.pilot != 0:
            _positive_int("pilot", self.pilot)
        if not isinstance(self.batch_api, bool):
            raise ConfigError(f"batch_api must be true or false, got {self.batch_api!r}")
        for name in ("max_cost_usd", "checkpoint_s", "batch_poll_s"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
            ):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.output_format not in (None, *_FORMATS):
            raise ConfigError(f"output_format must be 'csv' or 'jsonl', not {self.output_format!r}")
        if self.format_of_output() not in _FORMATS:
            raise ConfigError(f"output {self.output!r} must end in .csv or .jsonl (or give output_format)")
        for name in ("build", "parse"):
            if getattr(self, name) is not None:
                check_name(name, getattr(self, name))
        if self.template is None and self.build is None and self.format_of_input() != "jsonl":
            raise ConfigError(f"input {self.input!r} without a template or build must be JSONL request bodies")

    def format_of_input(self) -> str:
        return "csv" if Path(self.input).suffix.lower() == ".csv" else "jsonl"

    def format_of_output(self) -> str:
        return self.output_format or Path(self.output).suffix.lower().lstrip(".")

    @property
    def max_cost_micros(self) -> int | None:
        return None if self.max_cost_usd is None else round(self.max_cost_usd * 1_000_000)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> JobSpec:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"{where}: not a job specification ({error})") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not set(data) <= known:
            raise ConfigError(
                f"{where}: not a job specification (unknown fields "
                f"{sorted(set(data) - known) if isinstance(data, dict) else data!r})"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> JobSpec:
        return dataclasses.replace(self, **changes)


_MOST = 10**9  # no model's reply, no provider's limit, no sane job option comes near it


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MOST:
        raise ConfigError(f"{name} must be an int from 1 to {_MOST:,}, got {value!r}")
