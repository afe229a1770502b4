"""A batch job of many rows against the fake provider at given RPM/TPM: `llmthrottle batch`
beside the openai-cookbook parallel processor's approach (cookbook_processor.py, at 75% of the
limits, the top of its advice), in one run, each against a fresh fake provider in its own process.

    python benches/bench_batch.py [--rows 10000] [--rpm 10000] [--tpm 150000] [--pilot 100]
    python benches/bench_batch.py --rows 1000 --max-tokens 64     # quicker; replies far from 32

For each: seconds, rows/s, the share of the provider's token capacity used (tokens the fake
admitted over burst + rate x seconds), 429s, rows in the output (lost or duplicated), and for
llmthrottle the error of its pilot-based forecast of the expected cost (`--pilot` rows sent
before the go/no-go, their replies measured) against the cost actually spent, then its forecast
without a pilot (least / expected / most, the expected assuming replies of half of max_tokens).
Goals: >= 95% of TPM used, 0 rows lost or duplicated, forecast within 10% of the actual cost.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # cookbook_processor, beside this file

MODEL = "gpt-4o-mini"
TEMPLATE = "Classify the sentiment of this customer review as positive, negative or mixed: {text}"


def _rows(path: Path, count: int) -> None:
    words = "the soup was cold but the staff were friendly and the bread was fresh".split()
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "text"])
        for n in range(count):
            writer.writerow([f"r{n}", " ".join(words[: 4 + n % (len(words) - 4)])])


class _Fake:
    """`llmthrottle fake-provider` in its own process (so it does not share the runner's GIL)."""

    def __init__(self, args: argparse.Namespace) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmthrottle.cli",
                "fake-provider",
                "--port",
                str(self.port),
                "--rpm",
                str(args.rpm),
                "--tpm",
                str(args.tpm),
                "--output-tokens",
                str(args.output_tokens),
                "--ttft",
                str(args.ttft),
            ],
            stdout=subprocess.DEVNULL,
        )
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        for _ in range(200):
            try:
                self.counters()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the fake provider did not start")

    def counters(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/fake/counters", timeout=5) as answer:
            counters: dict[str, Any] = json.load(answer)
            return counters

    def __enter__(self) -> _Fake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _llmthrottle(args: argparse.Namespace, source: Path, directory: Path) -> dict[str, Any]:
    import openai

    import llmthrottle.batch as batch

    output = directory / "lt.jsonl"
    with _Fake(args) as fake:
        spec = batch.JobSpec(
            input=str(source),
            output=str(output),
            model=MODEL,
            template=TEMPLATE,
            max_tokens=args.max_tokens,
            rpm=args.rpm,
            tpm=args.tpm,
        )
        plan = batch.plan(spec)
        started = time.monotonic()
        result = batch.run(
            source,
            output,
            model=MODEL,
            template=TEMPLATE,
            max_tokens=args.max_tokens,
            rpm=args.rpm,
            tpm=args.tpm,
            concurrency=args.concurrency,
            pilot=args.pilot,
            progress=False,
            client=openai.AsyncOpenAI(base_url=fake.base_url, api_key="k"),
        )
        seconds = time.monotonic() - started
        counters = fake.counters()
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    return {
        "seconds": seconds,
        "counters": counters,
        "ids": ids,
        "spent": result.spent_micros,
        "plan": plan,
        "piloted": result.forecast,
    }


def _cookbook(args: argparse.Namespace, source: Path, directory: Path) -> dict[str, Any]:
    import openai
    from cookbook_processor import process

    from llmthrottle import cost, estimate

    output = directory / "cookbook.jsonl"
    with open(source, newline="") as file:
        rows = list(csv.DictReader(file))
    spent = 0

    def requests() -> Any:
        for row in rows:
            body = {
                "model": MODEL,
                "max_tokens": args.max_tokens,
                "messages": [{"role": "user", "content": TEMPLATE.format(**row)}],
            }
            yield row["id"], body, estimate(body).total

    async def main(base_url: str) -> None:
        with open(output, "w") as out:

            def done(tag: Any, reply: Any, _: float) -> None:
                nonlocal spent
                spent += cost(MODEL, reply.usage.model_dump()).total_micros
                out.write(json.dumps({"id": tag, "result": reply.choices[0].message.content}) + "\n")

            async with openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as client:
                await process(
                    requests(),
                    client,
                    max_requests_per_minute=args.rpm * 0.75,
                    max_tokens_per_minute=args.tpm * 0.75,
                    on_done=done,
                    on_failed=lambda *_: None,
                )

    with _Fake(args) as fake:
        started = time.monotonic()
        asyncio.run(main(fake.base_url))
        seconds = time.monotonic() - started
        counters = fake.counters()
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    return {"seconds": seconds, "counters": counters, "ids": ids, "spent": spent, "plan": None, "piloted": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rpm", type=int, default=10_000, help="the fake provider's requests per minute")
    parser.add_argument("--tpm", type=int, default=150_000, help="the fake provider's tokens per minute")
    parser.add_argument("--max-tokens", type=int, default=8, help="each row's max_tokens")
    parser.add_argument("--output-tokens", type=int, default=5, help="the fake's reply length")
    parser.add_argument("--ttft", type=float, default=0.05, help="the fake's seconds per reply")
    parser.add_argument("--concurrency", type=int, default=32, help="llmthrottle batch's most calls in flight")
    parser.add_argument("--pilot", type=int, default=100, help="llmthrottle batch's pilot rows (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        source = directory / "rows.csv"
        _rows(source, args.rows)
        print(
            f"{args.rows} rows, fake provider at {args.rpm} RPM / {args.tpm} TPM, max_tokens {args.max_tokens}, "
            f"replies of {args.output_tokens} tokens",
            flush=True,
        )
        print(
            f"{'runner':22s} {'seconds':>8s} {'rows/s':>7s} {'TPM used':>8s} {'429s':>6s} {'rows out':>8s} "
            f"{'lost':>5s} {'twice':>5s} {'spent':>10s} {'forecast error (pilot)':>22s}",
            flush=True,
        )
        expected = {f"r{n}" for n in range(args.rows)}
        for name, runner in (("llmthrottle batch", _llmthrottle), ("cookbook processor", _cookbook)):
            measured = runner(args, source, directory)
            counters, ids, seconds = measured["counters"], measured["ids"], measured["seconds"]
            most = args.tpm + args.tpm * seconds / 60
            used = counters["charged"].get("tokens", 0) / most
            piloted = measured["piloted"]
            error = "-" if piloted is None else f"{piloted.expected_micros / measured['spent'] - 1:+.1%}"
            print(
                f"{name:22s} {seconds:8.1f} {len(ids) / seconds:7.1f} {used:8.1%} {counters['rate_limited']:6d} "
                f"{len(ids):8d} {len(expected - set(ids)):5d} {len(ids) - len(set(ids)):5d} "
                f"${measured['spent'] / 1e6:9.4f} {error:>22s}",
                flush=True,
            )
            plan = measured["plan"]
            if plan is not None:
                spent = measured["spent"]
                print(
                    f"{'':22s} forecast without a pilot: least ${plan.least_micros / 1e6:.4f} ({plan.least_micros / spent - 1:+.1%}), "
                    f"expected ${plan.expected_micros / 1e6:.4f} ({plan.expected_micros / spent - 1:+.1%}), "
                    f"most ${plan.most_micros / 1e6:.4f} ({plan.most_micros / spent - 1:+.1%}) of the actual",
                    flush=True,
                )


if __name__ == "__main__":
    main()
