"""Helpers for checking batch jobs against the fake provider, shared by the tests and
`scripts/soak-batch`: an input of reviews, the `llmthrottle batch` command line, a SIGKILL
timed to land while calls are in flight, and `check_job`, which says what is wrong with a
finished job (a row lost or twice, a cost that is not `lt.cost` of its usage, a request the
provider saw that the ledger does not hold).
"""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TEMPLATE",
    "JobCheck",
    "KilledRuns",
    "batch_command",
    "check_job",
    "fake_counters",
    "intent_lines",
    "kill_in_flight",
    "read_jsonl",
    "run_with_random_kills",
    "wait_until",
    "write_reviews",
]

TEMPLATE = "Label the sentiment of this review: {text}"


def write_reviews(path: Path, count: int, *, bad: bool = False) -> Path:
    """A CSV of `count` reviews (`id`, `text`), and with `bad` two malformed rows after them."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "text"])
        for n in range(count):
            writer.writerow(
                [f"r{n}", f"review {n}: the soup was {'cold' if n % 3 else 'excellent'}" + " really" * (n % 7)]
            )
        if bad:
            file.write("r-short\n")  # one field, the header has two
            file.write('r-quote,"never closed\n')  # malformed CSV
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def batch_command(*arguments: str) -> list[str]:
    """`llmthrottle batch ARGUMENTS...` run by this Python."""
    return [sys.executable, "-m", "llmthrottle.cli", "batch", *arguments]


def fake_counters(base_url: str) -> dict[str, Any]:
    """What the fake provider at `base_url` (its root, or an SDK base URL ending in /v1) has seen."""
    root = base_url.removesuffix("/").removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/fake/counters", timeout=10) as answer:
        counters: dict[str, Any] = json.load(answer)
    return counters


def intent_lines(job_dir: Path) -> int:
    """Requests the job has written ahead since its intents were last settled."""
    try:
        return (job_dir / "intents.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:g}s for {what}")
        time.sleep(poll_s)


def kill_in_flight(
    runner: subprocess.Popen[Any], base_url: str, job_dir: Path, *, after_requests: int, timeout_s: float = 60.0
) -> int:
    """SIGKILLs `runner` once the provider has seen at least `after_requests` requests, some are
    still unanswered, and every request written ahead has reached the provider (the state holds
    for a few polls: the replies must be slow enough for that). Returns the requests in flight."""
    stable: list[tuple[int, int]] = []

    def ready() -> bool:
        if runner.poll() is not None:
            raise RuntimeError(f"the runner ended (exit {runner.returncode}) before it could be killed")
        counters = fake_counters(base_url)
        seen, answered = counters["requests"], sum(counters["by_status"].values())
        stable.append((seen, answered))
        del stable[:-4]
        return (
            seen >= after_requests
            and seen > answered
            and seen == intent_lines(job_dir)
            and len(stable) == 4
            and len(set(stable)) == 1
        )

    wait_until(ready, timeout_s, "calls in flight with every intent at the provider", poll_s=0.05)
    runner.send_signal(signal.SIGKILL)
    runner.communicate()
    seen, answered = stable[-1]
    return seen - answered


@dataclass(frozen=True)
class KilledRuns:
    """How `run_with_random_kills` ended: the SIGKILLs it sent and the finishing run's exit."""

    kills: int
    returncode: int
    stdout: str
    stderr: str


def run_with_random_kills(
    command: list[str],
    job_dir: Path,
    env: dict[str, str],
    base_url: str,
    chooser: random.Random,
    *,
    kill_within_s: tuple[float, float] = (0.05, 0.6),
    max_runs: int = 50,
) -> KilledRuns:
    """Runs `command` (a `batch run`) and SIGKILLs it at a random instant, `kill_within_s` after
    it sent its first request (start-up takes seconds on a loaded machine, so the clock starts
    then), then `batch resume`s the job the same way until a run ends by itself."""
    kills = 0
    for _ in range(max_runs):
        before = fake_counters(base_url)["requests"]
        runner = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(
                lambda runner=runner, before=before: (  # type: ignore[misc]
                    runner.poll() is not None or fake_counters(base_url)["requests"] > before
                ),
                300,
                "the runner's first request",
            )
            runner.wait(timeout=chooser.uniform(*kill_within_s))
        except subprocess.TimeoutExpired:
            runner.send_signal(signal.SIGKILL)
            runner.communicate()  # reaps it and closes its pipes
            kills += 1
            command = batch_command("resume", str(job_dir), "--no-progress")
            continue
        except BaseException:
            runner.kill()
            runner.communicate()
            raise
        out, err = runner.communicate()
        return KilledRuns(kills, runner.returncode, out, err)
    raise RuntimeError(f"the job did not finish in {max_runs} runs")


@dataclass
class JobCheck:
    """What `check_job` found: `problems` is empty for a job without fault."""

    problems: list[str] = field(default_factory=list)
    requests_seen: int = 0
    ledger_requests: int = 0
    unfinished_calls: int = 0
    unfinished_requests: int = 0
    ledger_micros: int = 0
    output_micros: int = 0
    unfinished_micros: int = 0


def check_job(
    output: Path,
    job_dir: Path,
    *,
    rows: int,
    bad_rows: int,
    model: str,
    requests_seen: int,
    provider: str = "openai",
    batch_api: bool = False,
) -> JobCheck:
    """Checks a finished job: each of its `rows + bad_rows` rows once in the output, in order, the
    good ones `ok` at `lt.cost` of their usage (half of it through the providers' batch APIs,
    `batch_api`); every request the provider saw (`requests_seen`)
    in the ledger (a call's record counts its attempts), any surplus only calls recorded as
    unfinished (written ahead, then killed before they left); the ledger's spend at least the
    output's plus the unfinished calls'."""
    import llmthrottle as lt
    from llmthrottle.pricing import batch_price_micros

    check = JobCheck(requests_seen=requests_seen)
    lines = read_jsonl(output)
    seen = Counter(int(line["row"]) for line in lines)
    lost = sorted(set(range(rows + bad_rows)) - set(seen))
    twice = sorted(row for row, count in seen.items() if count > 1)
    if lost:
        check.problems.append(f"{len(lost)} rows lost: {lost[:10]}")
    if twice:
        check.problems.append(f"{len(twice)} rows twice: {twice[:10]}")
    if [int(line["row"]) for line in lines] != sorted(seen):
        check.problems.append("the output is not in input order")
    good = [line for line in lines if int(line["row"]) < rows]
    if sum(1 for line in good if line["status"] == "ok") != rows:
        check.problems.append(f"{sum(1 for line in good if line['status'] != 'ok')} good rows did not succeed")
    for line in good:
        usage = (
            {"input_tokens": line["input_tokens"], "output_tokens": line["output_tokens"]}
            if provider == "anthropic"
            else {"prompt_tokens": line["input_tokens"], "completion_tokens": line["output_tokens"]}
        )
        priced = lt.cost(model, usage).total_micros
        if line["status"] == "ok" and line["cost_micros"] != (batch_price_micros(priced) if batch_api else priced):
            check.problems.append(f"row {line['row']} cost {line['cost_micros']}, not lt.cost of its usage")
    check.output_micros = sum(int(line["cost_micros"]) for line in lines)
    with lt.Ledger(job_dir / "ledger") as ledger:
        records = list(ledger.records())
    for record in records:
        attempts = int(record.tags.get("attempts", 1))
        check.ledger_requests += attempts
        check.ledger_micros += record.cost_micros
        if record.outcome == "unfinished":
            check.unfinished_calls += 1
            check.unfinished_requests += attempts
            check.unfinished_micros += record.cost_micros
    if check.ledger_requests < requests_seen:
        check.problems.append(
            f"{requests_seen - check.ledger_requests} of the {requests_seen} requests the provider saw "
            "are not in the ledger"
        )
    if check.ledger_requests - requests_seen > check.unfinished_requests:
        check.problems.append(
            f"the ledger holds {check.ledger_requests} requests, the provider saw {requests_seen}, "
            f"and only {check.unfinished_requests} are unfinished"
        )
    if check.ledger_micros < check.output_micros + check.unfinished_micros:
        check.problems.append(
            f"the ledger's spend {check.ledger_micros} is below the output's {check.output_micros} "
            f"plus the unfinished {check.unfinished_micros}"
        )
    return check
