"""Batch jobs against the fake provider, with the real SDKs: every row once in the output whatever
kills the runner, each row's cost equal to `lt.cost` of the usage the provider returned, the cost
cap honoured, bad rows reported while the rest goes on."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llmthrottle as lt
import llmthrottle.batch as batch
from llmthrottle.batch.concurrency import AdaptiveConcurrency
from llmthrottle.pricing import batch_price_micros
from llmthrottle.testing import FakeProvider
from llmthrottle.testing.batch_jobs import (
    TEMPLATE,
    batch_command,
    check_job,
    fake_counters,
    kill_in_flight,
    read_jsonl,
    run_with_random_kills,
    write_reviews,
)

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

MINI = "gpt-4o-mini"
SONNET = "claude-sonnet-4-5"


lines = read_jsonl


def ledger_rows(job_dir: Path) -> list[Any]:
    with lt.Ledger(job_dir / "ledger") as ledger:
        return list(ledger.records())


def test_a_job_runs_every_row_once_priced_as_the_provider_reported(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 120, bad=True)
    with FakeProvider(rpm=6000, tpm=60_000, output_tokens=4, error_rate=0.1, seed=7) as provider:
        result = batch.run(
            source,
            tmp_path / "labels.jsonl",
            model=MINI,
            template=TEMPLATE,
            max_tokens=4,
            rpm=6000,
            tpm=60_000,
            progress=False,
            client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"),
        )
        assert provider.counters.errors > 0  # some calls met a 500 and were retried
    out = lines(tmp_path / "labels.jsonl")
    assert [row["row"] for row in out] == list(range(122))
    good, bad = out[:120], out[120:]
    assert all(row["status"] == "ok" and row["result"] for row in good)
    assert [row["id"] for row in good] == [f"r{n}" for n in range(120)]
    for row in good:
        usage = {"prompt_tokens": row["input_tokens"], "completion_tokens": row["output_tokens"]}
        assert row["cost_micros"] == lt.cost(MINI, usage).total_micros > 0
    assert any(row["attempts"] > 1 for row in good)
    assert [row["status"] for row in bad] == ["error", "error"]
    assert "fields" in bad[0]["error"] and "malformed CSV" in bad[1]["error"]
    assert (result.succeeded, result.failed, result.pending) == (120, 2, 0)
    assert result.spent_micros == sum(row["cost_micros"] for row in out)
    # Every call that reached the provider is in the job's ledger, the failed attempts' retries too.
    recorded = ledger_rows(tmp_path / "labels.jsonl.job")
    assert sum(r.cost_micros for r in recorded) == result.spent_micros
    assert sum(1 for r in recorded if r.outcome == "ok") == 120


def test_the_forecast_counts_every_request_exactly_before_anything_is_sent(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 50)
    spec = batch.JobSpec(
        input=str(source),
        output=str(tmp_path / "out.jsonl"),
        model=MINI,
        template=TEMPLATE,
        max_tokens=10,
        rpm=20,
        tpm=100_000,
    )
    plan = batch.plan(spec)
    with open(source, newline="") as file:
        bodies = [
            {"model": MINI, "max_tokens": 10, "messages": [{"role": "user", "content": TEMPLATE.format(**row)}]}
            for row in csv.DictReader(file)
        ]
    assert plan.input_tokens == sum(lt.estimate(body).input_tokens for body in bodies)
    assert plan.requests == 50 and plan.max_output_tokens == 500
    assert plan.least_micros < plan.expected_micros < plan.most_micros
    assert plan.most_micros == sum(lt.worst_case_cost(MINI, lt.estimate(b).input_tokens, 10) for b in bodies)
    assert plan.seconds == pytest.approx((50 - 20) / 20 * 60)  # 20 at once, then one every 3 s


def test_a_job_over_its_cost_cap_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 40)
    with FakeProvider() as provider:
        with pytest.raises(lt.BudgetExceeded, match="max_cost_usd"):
            batch.run(
                source,
                tmp_path / "out.jsonl",
                model=MINI,
                template=TEMPLATE,
                max_tokens=200,
                max_cost_usd=0.0001,
                progress=False,
                client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"),
            )
        assert provider.counters.requests == 0


def test_the_cost_cap_stops_the_job_before_its_spend_could_pass_it(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 60)
    spec = batch.JobSpec(
        input=str(source), output="x.jsonl", model=MINI, template=TEMPLATE, max_tokens=20, expected_output_tokens=1
    )
    plan = batch.plan(spec)
    cap_micros = plan.most_micros // 2
    with FakeProvider(output_tokens=20) as provider:
        first = batch.run(
            source,
            tmp_path / "out.jsonl",
            model=MINI,
            template=TEMPLATE,
            max_tokens=20,
            expected_output_tokens=1,
            max_cost_usd=cap_micros / 1e6,
            concurrency=4,
            progress=False,
            client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"),
        )
        assert first.stopped and "max_cost_usd" in first.stopped
        assert 0 < first.succeeded < 60 and first.pending == 60 - first.succeeded
        assert first.spent_micros <= cap_micros
        sent = provider.counters.requests
        assert sent == first.succeeded
        second = batch.resume(
            tmp_path / "out.jsonl.job",
            max_cost_usd=1.0,
            progress=False,
            client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"),
        )
        assert provider.counters.requests == 60  # the rows done were not sent again
    assert (second.succeeded, second.pending) == (60, 0)
    assert [row["row"] for row in lines(tmp_path / "out.jsonl")] == list(range(60))


def test_request_bodies_and_the_batch_file_envelope_on_anthropic(tmp_path: Path) -> None:
    source = tmp_path / "requests.jsonl"
    good = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    source.write_text(
        "\n".join(
            [
                json.dumps(good),
                json.dumps({"custom_id": "wrapped-1", "body": {"model": SONNET, **good}}),
                "{not json",
                json.dumps([1, 2]),
                json.dumps({"custom_id": "no-messages", "body": {"max_tokens": 3}}),
            ]
        )
        + "\n"
    )
    with FakeProvider(output_tokens=6) as provider:
        result = batch.run(
            source,
            tmp_path / "out.csv",
            model=SONNET,
            provider="anthropic",
            progress=False,
            client=anthropic.AsyncAnthropic(base_url=provider.anthropic_base_url, api_key="k"),
        )
    with open(tmp_path / "out.csv", newline="") as file:
        out = list(csv.DictReader(file))
    assert [row["status"] for row in out] == ["ok", "ok", "error", "error", "error"]
    assert out[1]["id"] == "wrapped-1" and out[0]["result"].strip()
    assert "not JSON" in out[2]["error"] and "not an object" in out[3]["error"] and "messages" in out[4]["error"]
    for row in out[:2]:
        usage = {"input_tokens": int(row["input_tokens"]), "output_tokens": int(row["output_tokens"])}
        assert int(row["cost_micros"]) == lt.cost(SONNET, usage).total_micros
    assert (result.succeeded, result.failed) == (2, 3)


def test_a_missing_template_field_and_a_request_too_large_are_reported_per_row(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text(
        "\n".join(
            json.dumps(row)
            for row in ({"text": "fine"}, {"other": "no text here"}, {"text": "word " * 3000}, {"text": "also fine"})
        )
        + "\n"
    )
    with FakeProvider(tpm=2000) as provider:
        result = batch.run(
            source,
            tmp_path / "out.jsonl",
            model=MINI,
            template=TEMPLATE,
            max_tokens=10,
            tpm=2000,
            progress=False,
            client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"),
        )
        assert provider.counters.requests == 2
    out = lines(tmp_path / "out.jsonl")
    assert [row["status"] for row in out] == ["ok", "error", "error", "ok"]
    assert "missing template field 'text'" in out[1]["error"] and "too large" in out[2]["error"]
    assert result.failures == {"bad row: missing template field": 1, "request too large": 1}


def test_failed_rows_are_run_again_with_retry_failed(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 10)
    with FakeProvider(insufficient_quota=True) as broke:
        first = batch.run(
            source,
            tmp_path / "out.jsonl",
            model=MINI,
            template=TEMPLATE,
            max_tokens=5,
            progress=False,
            client=openai.AsyncOpenAI(base_url=broke.openai_base_url, api_key="k"),
        )
    assert first.failed == 10 and list(first.failures) == ["HTTP 429 insufficient_quota"]
    with FakeProvider(output_tokens=5) as paid:
        again = batch.resume(
            tmp_path / "out.jsonl.job",
            retry_failed=True,
            progress=False,
            client=openai.AsyncOpenAI(base_url=paid.openai_base_url, api_key="k"),
        )
    assert (again.succeeded, again.failed) == (10, 0)
    out = lines(tmp_path / "out.jsonl")
    assert [row["row"] for row in out] == list(range(10)) and all(row["status"] == "ok" for row in out)


def test_one_runner_per_job_directory(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 3)
    spec = batch.JobSpec(input=str(source), output=str(tmp_path / "o.jsonl"), model=MINI, template=TEMPLATE)
    from llmthrottle.batch.checkpoint import JobDirectory

    held = JobDirectory.create(tmp_path / "job", spec)
    try:
        with pytest.raises(lt.ConfigError, match="another process"):
            JobDirectory.open(tmp_path / "job")
    finally:
        held.close()
    with pytest.raises(lt.ConfigError, match="already holds a job"):
        JobDirectory.create(tmp_path / "job", spec)


@pytest.mark.parametrize(
    "spec, message",
    [
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_cost_usd=float("nan")), "max_cost_usd"),
        (dict(provider="gemini"), "provider"),
        (dict(output="out.txt"), "csv or .jsonl"),
        (dict(template="{text.__class__}"), "plain field name"),
        (dict(template="{unclosed"), "malformed"),
        (dict(template=None, input="rows.csv"), "JSONL request bodies"),
    ],
)
def test_bad_job_options_are_clear_errors(tmp_path: Path, spec: dict[str, Any], message: str) -> None:
    source = write_reviews(tmp_path / "rows.csv", 1)
    options = {"input": str(source), "output": "out.jsonl", "model": MINI, "template": TEMPLATE, **spec}
    with pytest.raises(lt.ConfigError, match=message):
        batch.plan(batch.JobSpec(**options))


def test_adaptive_concurrency_halves_on_trouble_and_grows_back() -> None:
    async def scenario() -> list[int]:
        bound = AdaptiveConcurrency(16)
        seen = []
        for attempts in [1] * 5 + [2] + [1] * 200:
            await bound.acquire()
            await bound.release(attempts, 0.1)
            seen.append(bound.limit)
        return seen

    seen = asyncio.run(scenario())
    assert seen[4] == 16 and seen[5] == 8 and seen[-1] == 16 and min(seen) == 8


KILL_ROWS = int(os.environ.get("BATCH_KILL_ROWS", "400"))


def test_sigkill_at_random_points_then_resume_leaves_every_row_exactly_once(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "reviews.csv", KILL_ROWS, bad=True)
    output, job_dir = tmp_path / "labels.jsonl", tmp_path / "labels.jsonl.job"
    chooser = random.Random(KILL_ROWS)
    with FakeProvider(rpm=60_000, tpm=2_000_000, output_tokens=3, error_rate=0.05, ttft_s=0.01, seed=3) as provider:
        run = batch_command(
            "run", str(source), str(output), "--model", MINI, "--template", TEMPLATE, "--max-tokens", "3",
            "--base-url", provider.openai_base_url, "--rpm", "60000", "--tpm", "2000000", "--concurrency", "8",
            "--no-progress",
        )  # fmt: skip
        env = {**os.environ, "OPENAI_API_KEY": "k"}
        ended = run_with_random_kills(run, job_dir, env, provider.base_url, chooser)
        assert ended.returncode == 3, (ended.stdout, ended.stderr)  # finished, with the two bad rows failed
        requests_seen = provider.counters.requests
    kills = ended.kills
    assert kills >= 1
    # Every row once, priced as reported; every request the provider saw is in the ledger (calls
    # in flight at a kill as unfinished, though their rows ran again).
    check = check_job(output, job_dir, rows=KILL_ROWS, bad_rows=2, model=MINI, requests_seen=requests_seen)
    assert check.problems == []


def test_a_job_the_tokenizer_or_limits_cannot_take_is_refused_before_it_starts(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "rows.csv", 2)
    with pytest.raises(lt.ConfigError, match="no known tokenizer"):
        batch.plan(batch.JobSpec(input=str(source), output="o.jsonl", model="no-such-model", template=TEMPLATE))
    with pytest.raises(lt.ConfigError, match="max_tokens"):
        batch.run(source, tmp_path / "o.jsonl", model=MINI, template=TEMPLATE, max_tokens=10**20, progress=False)
    assert not (tmp_path / "o.jsonl.job").exists()  # nothing to resume, nothing left behind


@pytest.mark.parametrize("provider_name", ["openai", "anthropic"])
def test_a_job_that_is_not_urgent_goes_through_the_providers_batch_api_at_half_price(
    tmp_path: Path, provider_name: str
) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 40, bad=True)
    model = MINI if provider_name == "openai" else SONNET
    with FakeProvider(rpm=5, output_tokens=4, error_rate=0.1, seed=11, batch_delay_s=0.3) as provider:
        client: Any = (
            openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k")
            if provider_name == "openai"
            else anthropic.AsyncAnthropic(base_url=provider.anthropic_base_url, api_key="k")
        )
        expected = batch.plan(
            batch.JobSpec(
                input=str(source),
                output="x.jsonl",
                model=model,
                provider=provider_name,
                template=TEMPLATE,
                max_tokens=4,
                batch_api=True,
            )
        )
        result = batch.run(
            source,
            tmp_path / "labels.jsonl",
            model=model,
            provider=provider_name,
            template=TEMPLATE,
            max_tokens=4,
            progress=False,
            client=client,
            batch_api=True,
            batch_poll_s=0.05,
        )
        # One batch, outside the rpm=5 limit: no synchronous call was made.
        assert (provider.counters.batches, provider.counters.batch_requests) == (1, 40)
        assert provider.counters.requests == 0
    out = lines(tmp_path / "labels.jsonl")
    assert [row["row"] for row in out] == list(range(42))
    good = [row for row in out[:40] if row["status"] == "ok"]
    failed = [row for row in out[:40] if row["status"] == "error"]
    assert good and failed and all("batch" in row["error"] for row in failed)  # the injected 500s
    for row in good:
        usage = (
            {"prompt_tokens": row["input_tokens"], "completion_tokens": row["output_tokens"]}
            if provider_name == "openai"
            else {"input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"]}
        )
        assert row["cost_micros"] == batch_price_micros(lt.cost(model, usage).total_micros) > 0
    assert result.spent_micros == sum(row["cost_micros"] for row in out)
    recorded = ledger_rows(tmp_path / "labels.jsonl.job")
    assert sum(r.cost_micros for r in recorded) == result.spent_micros
    assert {r.tags["batch"] for r in recorded} == {
        json.loads((tmp_path / "labels.jsonl.job" / "batches.json").read_text())[0]["id"]
    }
    # The forecast prices the batch at half price too: every full reply (the fake answers
    # max_tokens) costs the forecast's most, within a micro-dollar of rounding per row.
    ok_cost, share = sum(row["cost_micros"] for row in good), len(good) / 40
    assert expected.least_micros * share - len(good) <= ok_cost <= expected.most_micros * share + len(good)


def test_a_resumed_batch_job_polls_the_batch_it_submitted_instead_of_paying_twice(tmp_path: Path) -> None:
    from llmthrottle.batch.checkpoint import JobDirectory
    from llmthrottle.batch.provider_batch import ProviderBatches

    source = write_reviews(tmp_path / "reviews.csv", 10)
    with FakeProvider(output_tokens=3, batch_delay_s=0.2) as provider:
        spec = batch.JobSpec(
            input=str(source),
            output=str(tmp_path / "out.jsonl"),
            model=MINI,
            template=TEMPLATE,
            max_tokens=3,
            batch_api=True,
            batch_poll_s=0.05,
        )
        job = tmp_path / "out.jsonl.job"
        directory = JobDirectory.create(job, spec)
        rows = list(batch.read_rows(spec))

        async def submit_then_die() -> None:
            client = openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k")
            try:
                runner = ProviderBatches(directory, client, None, None, lt.PriceTable.default(), None)  # type: ignore[arg-type]
                await runner._submit("feedc0de", rows)
            finally:
                await client.close()

        asyncio.run(submit_then_die())  # the runner is killed after the provider took the batch
        directory.close()
        result = batch.resume(
            job, client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"), progress=False
        )
        assert (provider.counters.batches, provider.counters.batch_requests) == (1, 10)
    assert result.succeeded == 10 and [row["row"] for row in lines(tmp_path / "out.jsonl")] == list(range(10))


def test_a_damaged_line_in_a_batchs_results_leaves_only_its_row_to_run_again(tmp_path: Path) -> None:
    from llmthrottle.batch.checkpoint import JobDirectory
    from llmthrottle.batch.provider_batch import ProviderBatches

    source = write_reviews(tmp_path / "reviews.csv", 6)
    with FakeProvider(output_tokens=3, batch_delay_s=0.0) as provider:
        spec = batch.JobSpec(
            input=str(source),
            output=str(tmp_path / "out.jsonl"),
            model=MINI,
            template=TEMPLATE,
            max_tokens=3,
            batch_api=True,
            batch_poll_s=0.05,
        )
        job = tmp_path / "out.jsonl.job"
        directory = JobDirectory.create(job, spec)
        rows = list(batch.read_rows(spec))

        async def submit() -> str:
            client = openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k")
            try:
                runner = ProviderBatches(directory, client, None, None, lt.PriceTable.default(), None)  # type: ignore[arg-type]
                batch_id = await runner._submit("feedc0de", rows)
                await client.batches.retrieve(batch_id)  # the fake answers the batch when first looked at
                return batch_id
            finally:
                await client.close()

        fake = provider.batch_api.batches[asyncio.run(submit())]
        directory.close()
        assert fake.output_file_id is not None
        lines_of = provider.batch_api.files[fake.output_file_id].decode().splitlines()
        lines_of[2] = lines_of[2][:20]  # row 2's result cut short
        provider.batch_api.files[fake.output_file_id] = ("\n".join([*lines_of, "not json", "{}"]) + "\n").encode()
        client = openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k")
        result = batch.resume(job, client=client, progress=False)
        assert (result.succeeded, result.failed, result.pending) == (5, 0, 1)
        assert provider.counters.batches == 1  # the rest was not paid for twice
    assert 2 not in {row["row"] for row in lines(tmp_path / "out.jsonl")}


def test_a_call_in_flight_at_a_sigkill_is_in_the_ledger_and_the_spend_and_its_row_runs_again(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 16)
    output, job_dir = tmp_path / "labels.jsonl", tmp_path / "labels.jsonl.job"
    # Replies take a second, so the second wave of calls is still in flight when the kill lands.
    with FakeProvider(output_tokens=3, ttft_s=1.0) as provider:
        run = batch_command(
            "run", str(source), str(output), "--model", MINI, "--template", TEMPLATE, "--max-tokens", "8",
            "--base-url", provider.openai_base_url, "--concurrency", "4", "--no-progress",
        )  # fmt: skip
        runner = subprocess.Popen(run, env={**os.environ, "OPENAI_API_KEY": "k"}, stdout=subprocess.PIPE)
        in_flight = kill_in_flight(runner, provider.base_url, job_dir, after_requests=5)
        assert 1 <= in_flight <= 4
        provider.ttft_s = 0.0
        result = batch.resume(
            job_dir, client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"), progress=False
        )
        requests_seen = fake_counters(provider.base_url)["requests"]
    # Every request the provider counted is one ledger record (no retries here); each row once.
    recorded = ledger_rows(job_dir)
    assert len(recorded) == requests_seen == 16 + in_flight
    check = check_job(output, job_dir, rows=16, bad_rows=0, model=MINI, requests_seen=requests_seen)
    assert check.problems == []
    unfinished = [r for r in recorded if r.outcome == "unfinished"]
    assert len(unfinished) == in_flight == result.unfinished.calls
    rows = {row.index: row for row in batch.read_rows(batch.JobSpec(
        input=str(source), output=str(output), model=MINI, template=TEMPLATE, max_tokens=8))}  # fmt: skip
    for record in unfinished:  # at the worst case the call was admitted for, with its tokens
        row = rows[record.tags["row"]]
        assert record.cost_micros == lt.worst_case_cost(MINI, row.input_tokens, 8) > 0
        assert (record.input_tokens, record.output_tokens) == (row.input_tokens, 8)
    # The job's spend holds them, so a cost cap counts them; the summary says so.
    assert result.spent_micros == sum(r.cost_micros for r in recorded) == check.output_micros + check.unfinished_micros
    assert result.unfinished.micros == check.unfinished_micros
    assert f"{in_flight} calls in flight" in result.summary()
    # The resumed run's own calls have their records: settling again finds nothing unfinished.
    again = batch.resume(job_dir, client=openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k"))
    assert again.unfinished == result.unfinished and len(ledger_rows(job_dir)) == len(recorded)
    assert (job_dir / "intents.jsonl").read_bytes() == b""


# The runner dies the instant the provider has answered the batch's creation, before its id is
# written: a real SIGKILL, in the one window batches.json cannot close by itself.
_KILLED_AFTER_CREATE = """
import os, signal, sys
from llmthrottle.batch.checkpoint import JobDirectory
JobDirectory.note_batch = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
from llmthrottle.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("provider_name", ["openai", "anthropic"])
def test_a_batch_created_just_before_a_kill_is_found_by_its_token_and_paid_once(
    tmp_path: Path, provider_name: str
) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 12, bad=True)
    output, job_dir = tmp_path / "labels.jsonl", tmp_path / "labels.jsonl.job"
    model = MINI if provider_name == "openai" else SONNET
    with FakeProvider(output_tokens=3, batch_delay_s=0.2) as provider:
        base_url = provider.openai_base_url if provider_name == "openai" else provider.anthropic_base_url
        env = {**os.environ, "OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}
        arguments = ["run", str(source), str(output), "--model", model, "--provider", provider_name,
                     "--template", TEMPLATE, "--max-tokens", "3", "--base-url", base_url, "--batch-api",
                     "--batch-poll", "0.05", "--no-progress"]  # fmt: skip
        died = subprocess.run([sys.executable, "-c", _KILLED_AFTER_CREATE, "batch", *arguments], env=env)
        assert died.returncode == -signal.SIGKILL
        assert provider.counters.batches == 1
        (intent,) = json.loads((job_dir / "batches.json").read_text())
        assert intent["id"] is None and intent["token"]

        def client() -> Any:
            if provider_name == "openai":
                return openai.AsyncOpenAI(base_url=base_url, api_key="k")
            return anthropic.AsyncAnthropic(base_url=base_url, api_key="k")

        # Another job's batch of as many requests, created since: not adopted by mistake.
        options: dict[str, Any] = dict(model=model, provider=provider_name, template=TEMPLATE, max_tokens=3)
        other = batch.run(write_reviews(tmp_path / "other.csv", 12, bad=True), tmp_path / "other.jsonl",
                          **options, batch_api=True, batch_poll_s=0.05, progress=False, client=client())  # fmt: skip
        assert other.succeeded == 12
        result = batch.resume(job_dir, progress=False, client=client())
        # One batch for this job in all (and one for the other): found by its token, not sent again.
        assert (provider.counters.batches, provider.counters.batch_requests) == (2, 24)
    assert (result.succeeded, result.failed) == (12, 2)
    (adopted,) = json.loads((job_dir / "batches.json").read_text())
    assert adopted["token"] == intent["token"]
    assert provider.batch_api.batches[adopted["id"]].requests[0][0].startswith(f"{intent['token']}_")
    check = check_job(
        output, job_dir, rows=12, bad_rows=2, model=model, requests_seen=12, provider=provider_name, batch_api=True
    )
    assert check.problems == []  # every row once, at half price, each request of the batch in the ledger
    assert check.ledger_micros == check.output_micros > 0


def test_a_batch_whose_creation_never_reached_the_provider_is_submitted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmthrottle.batch import provider_batch

    source = write_reviews(tmp_path / "reviews.csv", 8)
    output, job_dir = tmp_path / "out.jsonl", tmp_path / "out.jsonl.job"

    async def unreachable(self: Any, token: str, chunk: list[Any]) -> str:
        raise ConnectionError("the runner died before the create left")

    monkeypatch.setattr(provider_batch, "CREATE_GRACE_S", 0.0)
    with FakeProvider(output_tokens=3, batch_delay_s=0.0) as provider:
        with monkeypatch.context() as patched:
            patched.setattr(provider_batch.ProviderBatches, "_create", unreachable)
            with pytest.raises(ConnectionError):
                batch.run(source, output, model=MINI, template=TEMPLATE, max_tokens=3, progress=False,
                          batch_api=True, batch_poll_s=0.05,
                          client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"))  # fmt: skip
        assert [b["id"] for b in json.loads((job_dir / "batches.json").read_text())] == [None]
        result = batch.resume(
            job_dir, progress=False, client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k")
        )
        assert (provider.counters.batches, provider.counters.batch_requests) == (1, 8)
    assert result.succeeded == 8 and [row["row"] for row in lines(output)] == list(range(8))
    assert [b["collected"] for b in json.loads((job_dir / "batches.json").read_text())] == [True]


def test_the_fake_lists_batches_newest_first_in_pages_as_the_sdks_read_them(tmp_path: Path) -> None:
    async def scenario(provider: FakeProvider) -> None:
        oa = openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k")
        an = anthropic.AsyncAnthropic(base_url=provider.anthropic_base_url, api_key="k")
        try:
            made_openai, made_anthropic = [], []
            for n in range(5):
                line = {
                    "custom_id": f"r{n}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": MINI, "messages": []},
                }
                upload = await oa.files.create(file=("b.jsonl", json.dumps(line).encode()), purpose="batch")
                created = await oa.batches.create(
                    input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                made_openai.append(created.id)
                params: Any = {"model": SONNET, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
                made_anthropic.append(
                    (await an.messages.batches.create(requests=[{"custom_id": f"r{n}", "params": params}])).id
                )
            listed_openai = [b.id async for b in oa.batches.list(limit=2)]
            listed_anthropic = [b.id async for b in an.messages.batches.list(limit=2)]
            assert listed_openai == made_openai[::-1] and listed_anthropic == made_anthropic[::-1]
            newer = await an.messages.batches.list(before_id=made_anthropic[1], limit=2)
            assert [b.id for b in newer.data] == made_anthropic[3:1:-1] and newer.has_more
            with pytest.raises(anthropic.BadRequestError, match="custom_id"):
                await an.messages.batches.create(requests=[{"custom_id": "row:1", "params": params}])
            with pytest.raises(openai.BadRequestError, match="limit"):
                await oa.batches.list(limit=101)
        finally:
            await oa.close()
            await an.close()

    with FakeProvider(batch_delay_s=0.0) as provider:
        asyncio.run(scenario(provider))


def test_pilot_rows_measure_the_replies_the_forecast_and_the_go_no_go_expect(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 60)
    options: dict[str, Any] = dict(model=MINI, template=TEMPLATE, max_tokens=100, concurrency=4)
    # Replies of 8 tokens where half of max_tokens would be 50: the assumed forecast is far off.
    assumed = batch.plan(batch.JobSpec(input=str(source), output="x.jsonl", **options))
    assert assumed.reply_tokens == 50 and "assumed" in assumed.reply_basis
    with FakeProvider(output_tokens=8) as provider:
        cap_usd = (assumed.expected_micros - 1) / 1e6  # just under the assumed forecast
        with pytest.raises(lt.BudgetExceeded, match="expected cost"):
            batch.run(source, tmp_path / "refused.jsonl", **options, max_cost_usd=cap_usd, progress=False,
                      client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"))  # fmt: skip
        assert provider.counters.requests == 0
        result = batch.run(source, tmp_path / "labels.jsonl", **options, max_cost_usd=cap_usd, pilot=5,
                           progress=False, client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"))  # fmt: skip
        assert provider.counters.requests == 60  # the pilot rows were kept, not sent again
    assert result.succeeded == 60 and [row["row"] for row in lines(tmp_path / "labels.jsonl")] == list(range(60))
    assert result.forecast.reply_tokens == 8 and "5 rows" in result.forecast.reply_basis
    assert abs(result.forecast.expected_micros / result.spent_micros - 1) <= 0.10
    assert abs(assumed.expected_micros / result.spent_micros - 1) > 0.10
    assert "replies of 8 tokens" in result.summary()


def test_a_job_whose_pilot_forecasts_too_much_stops_after_the_pilot_and_keeps_it(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "reviews.csv", 30)
    options: dict[str, Any] = dict(model=MINI, template=TEMPLATE, max_tokens=40, expected_output_tokens=1)
    optimistic = batch.plan(batch.JobSpec(input=str(source), output="x.jsonl", **options))
    with FakeProvider(output_tokens=40) as provider:
        with pytest.raises(lt.BudgetExceeded, match="expected cost"):
            batch.run(source, tmp_path / "out.jsonl", **options, max_cost_usd=optimistic.expected_micros * 1.2 / 1e6,
                      pilot=4, progress=False, client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"))  # fmt: skip
        assert provider.counters.requests == 4
        again = batch.resume(tmp_path / "out.jsonl.job", max_cost_usd=1.0, progress=False,
                             client=openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="k"))  # fmt: skip
        assert provider.counters.requests == 30
    assert again.succeeded == 30 and again.forecast.reply_tokens == 40


_LABELS_MODULE = """
def build(fields):
    return {"messages": [{"role": "user", "content": "Rate this: " + fields["text"]}], "max_tokens": 20}


def parse(reply):
    return {"label": reply["choices"][0]["message"]["content"].strip().upper(), "model": reply["model"]}


not_callable = 3
"""


def test_build_and_parse_named_on_the_command_line_are_kept_for_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mylabels.py").write_text(_LABELS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = write_reviews(tmp_path / "reviews.csv", 24)
    output, job_dir = tmp_path / "out.jsonl", tmp_path / "out.jsonl.job"
    env = {**os.environ, "OPENAI_API_KEY": "k", "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    # A cap of half the job stops it part way; the resume must build and parse as the run did.
    half = batch.plan(batch.JobSpec(input=str(source), output="x.jsonl", model=MINI, build="mylabels:build"))
    assert half.requests == 24 and half.max_output_tokens == 24 * 20
    with FakeProvider(output_tokens=20) as provider:  # every reply its worst case: the cap bites
        common = ["--base-url", provider.openai_base_url, "--no-progress"]
        run = [str(source), str(output), "--model", MINI, "--build", "mylabels:build", "--parse", "mylabels:parse",
               "--max-cost", str(half.most_micros / 2 / 1e6), "--expected-output-tokens", "1", "--concurrency", "2",
               *common]  # fmt: skip
        first = subprocess.run(batch_command("run", *run), env=env, capture_output=True, text=True)
        assert first.returncode == 3 and "max_cost_usd" in first.stdout, first.stderr
        stored = json.loads((job_dir / "job.json").read_text())
        assert (stored["build"], stored["parse"], stored["template"]) == ("mylabels:build", "mylabels:parse", None)
        done = len(lines(output))
        assert 0 < done < 24
        again = subprocess.run(
            batch_command("resume", str(job_dir), "--max-cost", "1", "--no-progress"), env=env, capture_output=True
        )
        assert again.returncode == 0, again.stderr
        assert provider.counters.requests == 24
    out = lines(output)
    assert [row["row"] for row in out] == list(range(24))
    assert all(row["result"] == {"label": " ".join(["TOK"] * 20), "model": MINI} for row in out)


@pytest.mark.parametrize(
    "option, name, message",
    [
        ("--build", "nosuchmodule_xyz:build", "cannot import 'nosuchmodule_xyz'"),
        ("--build", "mylabels:missing", "has no attribute 'missing'"),
        ("--parse", "mylabels:not_callable", "is a int, not a function"),
        ("--parse", "mylabels.parse", "package.module:function"),
    ],
)
def test_a_build_or_parse_name_that_does_not_import_is_refused_before_the_job_starts(
    tmp_path: Path, option: str, name: str, message: str
) -> None:
    (tmp_path / "mylabels.py").write_text(_LABELS_MODULE)
    source = write_reviews(tmp_path / "reviews.csv", 2)
    env = {**os.environ, "OPENAI_API_KEY": "k", "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    run = [str(source), str(tmp_path / "out.jsonl"), "--model", MINI, "--template", TEMPLATE, option, name]
    refused = subprocess.run(batch_command("run", *run, "--base-url", "http://127.0.0.1:9/v1"), env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    assert not (tmp_path / "out.jsonl.job").exists()


def test_a_damaged_intent_line_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    from llmthrottle.batch.checkpoint import JobDirectory

    source = write_reviews(tmp_path / "reviews.csv", 2)
    spec = batch.JobSpec(input=str(source), output=str(tmp_path / "o.jsonl"), model=MINI, template=TEMPLATE)
    JobDirectory.create(tmp_path / "job", spec).close()
    (tmp_path / "job" / "intents.jsonl").write_text('{"row": 0, "call": "c1"}\n{"row": 1, "ca')  # a cut last line
    with pytest.raises(lt.ConfigError, match=r"intents\.jsonl: line 1 is not an intent"):
        batch.resume(tmp_path / "job", progress=False)
