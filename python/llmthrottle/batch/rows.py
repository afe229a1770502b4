"""A batch job's input, row by row: each row becomes one request body, or a reason it cannot.

A row's `index` is its position among the input's rows (bad rows included), so the same file
gives the same indexes on every run: that is what a checkpoint and the output are keyed by.
A bad row (malformed CSV or JSON, a missing template field, a body the provider would refuse)
is reported with its reason; the rows after it go on.
"""

from __future__ import annotations

import csv
import json
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .._native import ConfigError
from ..request_estimate import estimate
from .spec import JobSpec

__all__ = ["BuildRequest", "Row", "read_rows", "result_line", "template_fields"]

BuildRequest = Callable[[dict[str, Any]], dict[str, Any]]

_MAX_LINE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Row:
    """One input row: its request `body`, or the `error` that keeps it from being sent."""

    index: int
    id: str
    body: dict[str, Any] | None
    error: str | None = None
    input_tokens: int = 0
    max_output_tokens: int = 0


def result_line(
    row: Row,
    *,
    result: Any = None,
    error: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_micros: int = 0,
    attempts: int = 0,
    latency_s: float = 0.0,
) -> dict[str, Any]:
    """A finished row as the job's results and output hold it (`OUTPUT_COLUMNS`)."""
    return {
        "row": row.index,
        "id": row.id,
        "status": "error" if error is not None else "ok",
        "result": result,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_micros": cost_micros,
        "cost_usd": cost_micros / 1e6,
        "attempts": attempts,
        "latency_s": round(latency_s, 4),
        "error": error,
    }


def template_fields(template: str) -> list[str]:
    """The field names a template uses; a template that is not one is a `ConfigError`."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConfigError(f"template {template!r} is malformed: {error}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ConfigError(f"template field {{{name}}} must be a plain field name like {{text}}")
        names.append(name)
    return names


def read_rows(spec: JobSpec, build: BuildRequest | None = None) -> Iterator[Row]:
    """Every row of the job's input, in order (see the module docstring)."""
    if spec.template is not None:
        template_fields(spec.template)
    # The job's model is the job's to get right, not each row's: one clear error, at once.
    estimate({"model": spec.model, "max_tokens": 1, "messages": [{"role": "user", "content": ""}]}, spec.provider)
    records = _csv_records(spec.input) if spec.format_of_input() == "csv" else _jsonl_records(spec.input)
    for index, (number, fields, problem) in enumerate(records):
        row_id = str((fields or {}).get("custom_id") or (fields or {}).get("id") or number)
        if problem is not None or fields is None:
            yield Row(index, row_id, None, problem or "not a row")
            continue
        try:
            body = _body(spec, fields, build)
            counted = estimate(body, spec.provider)
        except (KeyError, ValueError, TypeError) as error:
            yield Row(index, row_id, None, _reason(error))
            continue
        too_large = _too_large(spec, counted.input_tokens + counted.max_output_tokens)
        yield Row(
            index,
            row_id,
            body if too_large is None else None,
            too_large,
            counted.input_tokens,
            counted.max_output_tokens,
        )


def _reason(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing template field {error.args[0]!r}"
    return f"{type(error).__name__}: {error}"


def _too_large(spec: JobSpec, tokens: int) -> str | None:
    if spec.tpm is not None and spec.provider == "openai" and tokens > spec.tpm:
        return f"request too large: {tokens} tokens (input plus max_tokens) against {spec.tpm} tokens per minute"
    return None


def _body(spec: JobSpec, fields: dict[str, Any], build: BuildRequest | None) -> dict[str, Any]:
    if build is not None:
        body = build(dict(fields))
        if not isinstance(body, dict):
            raise TypeError(f"build returned {type(body).__name__}, not a request body dict")
        return {"model": spec.model, **body}
    if spec.template is None:  # the line is the request (or the providers' batch-file envelope)
        envelope = fields.get("body")
        body = (
            dict(envelope)
            if isinstance(envelope, dict)
            else {k: v for k, v in fields.items() if k not in ("custom_id", "id")}
        )
        body.setdefault("model", spec.model)
        body.setdefault("max_tokens", spec.max_tokens)
        return body
    prompt = spec.template.format_map({name: _text(value) for name, value in fields.items()})
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    if spec.provider == "anthropic":
        body = {"model": spec.model, "max_tokens": spec.max_tokens, "messages": messages}
        if spec.system:
            body["system"] = spec.system
        return body
    if spec.system:
        messages.insert(0, {"role": "system", "content": spec.system})
    return {"model": spec.model, "max_tokens": spec.max_tokens, "messages": messages}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _csv_records(path: str) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(row number, fields or None, problem or None) for each data row of a CSV with a header."""
    with open(path, newline="", encoding="utf-8", errors="replace") as file:
        reader = csv.reader(file, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ConfigError(f"{path}: the header row is malformed ({error})") from None
        if len(set(header)) != len(header) or not all(header):
            raise ConfigError(f"{path}: the header row must name every column once, got {header!r}")
        number = 0  # data rows are numbered from 1, as JSONL lines are
        while True:
            number += 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield number, None, f"malformed CSV at line {reader.line_num}: {error}"
                continue
            if not values:
                number -= 1  # a blank line is not a row
                continue
            if len(values) != len(header):
                yield number, None, f"row has {len(values)} fields, the header has {len(header)}"
                continue
            yield number, dict(zip(header, values)), None


def _jsonl_records(path: str) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    with open(path, "rb") as file:
        number = 0
        for raw in file:
            stripped = raw.strip()
            if not stripped:
                continue
            number += 1
            if len(stripped) > _MAX_LINE_BYTES:
                yield number, None, f"line {number} is longer than {_MAX_LINE_BYTES} bytes"
                continue
            try:
                value = json.loads(stripped)
            except (ValueError, RecursionError) as error:
                yield number, None, f"line {number} is not JSON: {str(error)[:200]}"
                continue
            if not isinstance(value, dict):
                yield number, None, f"line {number} is a JSON {type(value).__name__}, not an object"
                continue
            yield number, value, None
