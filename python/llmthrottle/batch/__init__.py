"""Batch jobs over LLM APIs: many rows at the provider's limit, with a cost forecast and cap,
checkpoints and resume (`llmthrottle batch run|resume|forecast`).

    import llmthrottle.batch as batch
    result = batch.run("reviews.csv", "labels.jsonl", model="gpt-4o-mini",
                       template="Label the sentiment of: {text}", max_tokens=5, max_cost_usd=2.0)
    print(result.summary())

A job lives in a directory (default: the output's path plus ``.job``) that holds its
specification, every finished row and the ledger of every call, so that after a crash or
Ctrl-C `batch.resume(job_dir)` finishes it with every row in the output exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from .callables import load
from .checkpoint import JobDirectory
from .forecast import Forecast, forecast
from .rows import BuildRequest, Row, read_rows
from .runner import OUTPUT_COLUMNS, BatchResult, ParseReply, Runner
from .spec import JobSpec, Provider

__all__ = [
    "OUTPUT_COLUMNS",
    "BatchResult",
    "Forecast",
    "JobSpec",
    "Row",
    "plan",
    "read_rows",
    "resume",
    "resume_async",
    "run",
    "run_async",
]

PathLike = str | Path


def default_job_dir(output: PathLike) -> Path:
    return Path(f"{output}.job")


async def run_async(
    input: PathLike,
    output: PathLike,
    *,
    model: str,
    provider: Provider = "openai",
    template: str | None = None,
    system: str | None = None,
    max_tokens: int = 256,
    base_url: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    max_cost_usd: float | None = None,
    expected_output_tokens: int | None = None,
    pilot: int = 0,
    concurrency: int = 16,
    job_dir: PathLike | None = None,
    client: Any = None,
    build: BuildRequest | str | None = None,
    parse: ParseReply | str | None = None,
    state: Any = None,
    progress: bool = True,
    checkpoint_rows: int = 100,
    checkpoint_s: float = 5.0,
    batch_api: bool = False,
    batch_poll_s: float = 30.0,
) -> BatchResult:
    """Runs a new job (see `JobSpec` for the options) and returns how it ended.

    `client` is an async SDK client to use (`openai.AsyncOpenAI`, `anthropic.AsyncAnthropic`;
    default: one made from `provider`, `base_url` and the provider's API key variable); it is
    wrapped, and closed at the end. `build(fields) -> body` makes a row's request instead of the
    template, `parse(reply) -> value` its result instead of the reply's text; either may be a
    callable, or its name as `package.module:function`, which the job keeps for `resume`
    (a name that does not import is a `ConfigError` before the job starts). `state` shares the
    job's limits with other processes (`lt.SharedState`). Raises `BudgetExceeded` before
    anything is sent when the expected cost passes `max_cost_usd`; with `pilot=N`, the first N
    rows are sent first and the expected cost is judged on the length of their replies (the
    job directory then keeps them for a resume with a higher cap)."""
    spec = JobSpec(
        input=str(input),
        output=str(output),
        model=model,
        provider=provider,
        template=template,
        system=system,
        max_tokens=max_tokens,
        base_url=base_url,
        rpm=rpm,
        tpm=tpm,
        max_cost_usd=max_cost_usd,
        expected_output_tokens=expected_output_tokens,
        pilot=pilot,
        concurrency=concurrency,
        checkpoint_rows=checkpoint_rows,
        checkpoint_s=checkpoint_s,
        batch_api=batch_api,
        batch_poll_s=batch_poll_s,
        build=build if isinstance(build, str) else None,
        parse=parse if isinstance(parse, str) else None,
    )
    if not Path(spec.input).is_file():
        raise FileNotFoundError(f"batch input {spec.input!r} does not exist")
    build_row, parse_reply = _callables(spec, build, parse)
    directory = JobDirectory.create(Path(job_dir) if job_dir is not None else default_job_dir(output), spec)
    try:
        return await Runner(
            directory, client=client, build=build_row, parse=parse_reply, state=state, show_progress=progress
        ).run()
    finally:
        directory.close()


def _callables(
    spec: JobSpec, build: BuildRequest | str | None, parse: ParseReply | str | None
) -> tuple[BuildRequest | None, ParseReply | None]:
    """The job's builder and parser: those given as callables, else those its spec names."""
    if not callable(build):
        build = load("build", spec.build) if spec.build else None
    if not callable(parse):
        parse = load("parse", spec.parse) if spec.parse else None
    return build, parse


async def resume_async(
    job_dir: PathLike,
    *,
    retry_failed: bool = False,
    max_cost_usd: float | None = None,
    client: Any = None,
    build: BuildRequest | None = None,
    parse: ParseReply | None = None,
    state: Any = None,
    progress: bool = True,
) -> BatchResult:
    """Finishes the job in `job_dir`: the rows without a result (and with `retry_failed`, the
    failed ones) run, and the output is written again with every row once. `max_cost_usd`
    replaces the job's cap. The `build` and `parse` the job named are used again; callables
    the job was given must be given again."""
    directory = JobDirectory.open(Path(job_dir))
    try:
        if max_cost_usd is not None:
            directory.spec = directory.spec.replace(max_cost_usd=max_cost_usd)
        build_row, parse_reply = _callables(directory.spec, build, parse)
        return await Runner(
            directory,
            client=client,
            build=build_row,
            parse=parse_reply,
            state=state,
            retry_failed=retry_failed,
            show_progress=progress,
        ).run()
    finally:
        directory.close()


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _blocking(coroutine_function: Callable[_P, Coroutine[Any, Any, _T]]) -> Callable[_P, _T]:
    def blocking(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        return asyncio.run(coroutine_function(*args, **kwargs))

    blocking.__name__ = coroutine_function.__name__.removesuffix("_async")
    blocking.__doc__ = f"`{coroutine_function.__name__}` from blocking code: the same options and result."
    return blocking


run = _blocking(run_async)
resume = _blocking(resume_async)


def plan(spec: JobSpec, build: BuildRequest | None = None) -> Forecast:
    """The forecast of a job before it runs (every row counted exactly, nothing sent); `build`
    (default: the one the spec names) makes each row's request."""
    return forecast(spec, read_rows(spec, _callables(spec, build, None)[0]))
