"""The throughput-tuning benchmark: worker processes making chat calls against the fake provider
with RPM/TPM limits for a fixed time, each way of handling the provider's limits in turn, in one
run on one machine:

- the SDK's own retries alone (openai's `max_retries`, which honours Retry-After);
- a tenacity decorator (random exponential backoff on `RateLimitError`, as the openai cookbook's
  "how to handle rate limits" suggests);
- the cookbook's parallel processor, written from its description: per-process request and
  token capacity refilled continuously, set to 75% of the limits (the top of its 50-75% advice)
  split between the processes, a 15 s pause for everyone after a rate-limit error, failed
  requests retried;
- LiteLLM's Router with the deployment's rpm/tpm set (usage-based routing), one per process;
- `lt.wrap` with the limits known (a Limiter on one SharedState for every process);
- `lt.wrap` alone (limits learned from the provider's headers, on one SharedState);
- `lt.wrap` alone on the `anthropic` SDK, every call sending the same 3,000-token system prompt
  marked for prompt caching, against input and output limits (ITPM = --tpm, OTPM = a fifth of
  it): cache reads do not count toward ITPM, so the output limit binds, and its share used is
  what the row reports. No other strategy is run against these limits.

    pip install litellm tenacity
    python benches/bench_provider.py [--workers 4] [--threads 8] [--seconds 30] [--tpm 60000] [--rpm 3000]

For each: the share of the provider's token capacity used (tokens the fake admitted over its
most, burst + rate x seconds), requests the provider answered 429 and their share, calls that
failed in the caller's hands, and the p50/p99 wait a call spent beyond the provider's own
latency. Goals: limits known, >= 97% used with 0 429s; learned, >= 90% and <= 1% 429s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # cookbook_processor, beside this file

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Classify the sentiment of this review: the soup was cold."}]
API_KEY = "sk-bench"


def _strategies() -> dict[str, Callable[..., None]]:
    return {
        "SDK retries alone": _run_sdk_retries,
        "tenacity": _run_tenacity,
        "cookbook processor": _run_cookbook,
        "LiteLLM Router": _run_litellm,
        "lt.wrap, limits known": _run_wrap_known,
        "lt.wrap, learned": _run_wrap_learned,
        ANTHROPIC_ROW: _run_wrap_learned_anthropic,
    }


# Run against Anthropic's input and output limits; its "used" is the output limit's share.
ANTHROPIC_ROW = "lt.wrap Anthropic, cached"
ANTHROPIC_MODEL = "claude-sonnet-4-5"
CACHED_SYSTEM = [{"type": "text", "text": "Rules of the house. " * 750, "cache_control": {"type": "ephemeral"}}]


# ---------------------------------------------------------------------------- one worker process


class _Run:
    """What a worker needs: where to call, until when, and where its latencies go."""

    def __init__(self, args: argparse.Namespace, base_url: str, state_name: str, ready: Any, go: Any) -> None:
        self.args, self.base_url, self.state_name, self.ready, self.go = args, base_url, state_name, ready, go
        self.deadline_after_s = args.seconds
        self.latencies: list[float] = []
        self.failures = 0
        self.deadline = 0.0
        self._lock = threading.Lock()

    def ready_then_start(self) -> None:
        self.ready.release()
        self.go.wait()
        self.deadline = time.monotonic() + self.deadline_after_s

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def timed(self, call: Callable[[], Any]) -> None:
        started = time.monotonic()
        try:
            call()
        except Exception:
            with self._lock:
                self.failures += 1
            return
        if time.monotonic() < self.deadline:
            with self._lock:
                self.latencies.append(time.monotonic() - started)

    def threads(self, call: Callable[[], Any]) -> None:
        def loop() -> None:
            while self.running():
                self.timed(call)

        self.ready_then_start()
        workers = [threading.Thread(target=loop, daemon=True) for _ in range(self.args.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=self.deadline_after_s + 5)


def _chat(client: Any, max_tokens: int) -> Callable[[], Any]:
    return lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=max_tokens)


def _run_sdk_retries(run: _Run) -> None:
    import openai

    run.threads(_chat(openai.OpenAI(base_url=run.base_url, api_key=API_KEY, max_retries=10), run.args.output_tokens))


def _run_tenacity(run: _Run) -> None:
    import openai
    import tenacity

    client = openai.OpenAI(base_url=run.base_url, api_key=API_KEY, max_retries=0)

    @tenacity.retry(
        wait=tenacity.wait_random_exponential(min=1, max=60),
        stop=tenacity.stop_after_attempt(10),
        retry=tenacity.retry_if_exception_type(openai.RateLimitError),
    )
    def call() -> Any:
        return _chat(client, run.args.output_tokens)()

    run.threads(call)


def _run_cookbook(run: _Run) -> None:
    import itertools

    import openai
    from cookbook_processor import process

    from llmthrottle import estimate

    share = 0.75 / run.args.workers  # the top of its advice, split: it cannot coordinate processes
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": run.args.output_tokens}
    tokens = estimate(body, "openai").total

    def done(_: Any, __: Any, started: float) -> None:
        if time.monotonic() < run.deadline:
            run.latencies.append(time.monotonic() - started)

    def failed(_: Any, __: BaseException) -> None:
        run.failures += 1

    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=run.base_url, api_key=API_KEY, max_retries=0) as client:
            await process(
                ((None, body, tokens) for _ in itertools.count()),
                client,
                max_requests_per_minute=run.args.rpm * share,
                max_tokens_per_minute=run.args.tpm * share,
                on_done=done,
                on_failed=failed,
                running=run.running,
            )

    run.ready_then_start()
    asyncio.run(main())


def _run_litellm(run: _Run) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    router = litellm.Router(
        model_list=[
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": run.base_url,
                    "api_key": API_KEY,
                    "rpm": run.args.rpm,
                    "tpm": run.args.tpm,
                },
            }
        ],
        routing_strategy="usage-based-routing-v2",
        num_retries=5,
    )
    run.threads(lambda: router.completion(model=MODEL, messages=MESSAGES, max_tokens=run.args.output_tokens))


def _run_wrap_known(run: _Run) -> None:
    import openai

    import llmthrottle as lt

    limiter = lt.Limiter(
        {"requests": f"{run.args.rpm}/min", "tokens": f"{run.args.tpm}/min"}, state=lt.SharedState(run.state_name)
    )
    client = lt.wrap(openai.OpenAI(base_url=run.base_url, api_key=API_KEY), limiter=limiter)
    run.threads(_chat(client, run.args.output_tokens))


def _run_wrap_learned(run: _Run) -> None:
    import openai

    import llmthrottle as lt

    client = lt.wrap(openai.OpenAI(base_url=run.base_url, api_key=API_KEY), state=lt.SharedState(run.state_name))
    run.threads(_chat(client, run.args.output_tokens))


def _run_wrap_learned_anthropic(run: _Run) -> None:
    import anthropic

    import llmthrottle as lt

    client = lt.wrap(anthropic.Anthropic(base_url=run.base_url, api_key=API_KEY), state=lt.SharedState(run.state_name))
    run.threads(
        lambda: client.messages.create(
            model=ANTHROPIC_MODEL, system=CACHED_SYSTEM, messages=MESSAGES, max_tokens=run.args.output_tokens
        )
    )


def _worker(
    strategy: str, args: argparse.Namespace, base_url: str, state_name: str, ready: Any, go: Any, results: Any
) -> None:
    run = _Run(args, base_url, state_name, ready, go)
    _strategies()[strategy](run)
    results.put((run.latencies, run.failures))


# ---------------------------------------------------------------------------- the main process


def _percentile(samples: list[float], share: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * share))] if samples else float("nan")


def _provider_latency_s(args: argparse.Namespace) -> float:
    """The median latency of an unthrottled call to an unlimited fake: what no strategy can avoid."""
    import openai

    from llmthrottle.testing import FakeProvider

    with FakeProvider(output_tokens=args.output_tokens, ttft_s=args.ttft, per_token_s=args.per_token) as provider:
        with openai.OpenAI(base_url=provider.openai_base_url, api_key=API_KEY) as client:
            samples = []
            for _ in range(30):
                started = time.monotonic()
                _chat(client, args.output_tokens)()
                samples.append(time.monotonic() - started)
    return statistics.median(samples)


def _measure(strategy: str, args: argparse.Namespace, base_latency_s: float) -> dict[str, Any]:
    from llmthrottle.testing import FakeProvider

    context = mp.get_context("spawn")
    go, ready, results = context.Event(), context.Semaphore(0), context.Queue()
    state_name = f"bench-provider-{uuid.uuid4().hex[:8]}"
    anthropic_row = strategy == ANTHROPIC_ROW
    limits = {"itpm": args.tpm, "otpm": args.tpm // 5} if anthropic_row else {"tpm": args.tpm}
    with FakeProvider(
        rpm=args.rpm, output_tokens=args.output_tokens, ttft_s=args.ttft, per_token_s=args.per_token, **limits
    ) as provider:
        base_url = provider.anthropic_base_url if anthropic_row else provider.openai_base_url
        workers = [
            context.Process(target=_worker, args=(strategy, args, base_url, state_name, ready, go, results))
            for _ in range(args.workers)
        ]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.acquire()
        go.set()
        time.sleep(args.seconds)
        with provider._lock:
            requests, rate_limited = provider.counters.requests, provider.counters.rate_limited
            tokens = provider.counters.output_tokens if anthropic_row else provider.counters.charged.get("tokens", 0)
        latencies: list[float] = []
        failures = 0
        for _ in workers:
            worker_latencies, worker_failures = results.get(timeout=120)
            latencies += worker_latencies
            failures += worker_failures
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    _unlink_state(state_name)
    added = sorted(max(0.0, latency - base_latency_s) for latency in latencies)
    limit = args.tpm // 5 if anthropic_row else args.tpm
    most = limit + limit * args.seconds / 60
    return {
        "strategy": strategy,
        "used": tokens / most,
        "requests": requests,
        "rate_limited": rate_limited,
        "calls": len(latencies),
        "failures": failures,
        "p50": _percentile(added, 0.5),
        "p99": _percentile(added, 0.99),
    }


def _unlink_state(name: str) -> None:
    for suffix in ("", ".lock"):
        try:
            os.unlink(f"/dev/shm/llmthrottle-{name}{suffix}")
        except OSError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=8, help="calls in flight per worker (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="run time per strategy (default: %(default)s)")
    parser.add_argument("--rpm", type=int, default=3000, help="the fake provider's requests per minute")
    parser.add_argument("--tpm", type=int, default=60_000, help="the fake provider's tokens per minute")
    parser.add_argument("--output-tokens", type=int, default=50, help="max_tokens and reply length")
    parser.add_argument("--ttft", type=float, default=0.05, help="the fake's seconds before the first token")
    parser.add_argument("--per-token", type=float, default=0.002, help="the fake's seconds per output token")
    parser.add_argument("--only", default="", help="comma-separated strategy names (default: all)")
    args = parser.parse_args()
    chosen = [
        name
        for name in _strategies()
        if not args.only or any(part.strip().lower() in name.lower() for part in args.only.split(","))
    ]
    base = _provider_latency_s(args)
    print(
        f"{args.workers} processes x {args.threads} calls in flight, {args.seconds:g}s each, fake provider at "
        f"{args.rpm} RPM / {args.tpm} TPM, {args.output_tokens} output tokens, provider latency {base * 1e3:.1f} ms",
        flush=True,
    )
    print(
        f"{'strategy':24s} {'TPM used':>8s} {'requests':>8s} {'429s':>6s} {'429 %':>6s} {'calls ok':>8s} "
        f"{'failed':>6s} {'p50 wait':>9s} {'p99 wait':>9s}",
        flush=True,
    )
    for name in chosen:
        row = _measure(name, args, base)
        share_429 = row["rate_limited"] / row["requests"] if row["requests"] else 0.0
        print(
            f"{name:24s} {row['used']:8.1%} {row['requests']:8d} {row['rate_limited']:6d} {share_429:6.1%} "
            f"{row['calls']:8d} {row['failures']:6d} {row['p50'] * 1e3:7.1f}ms {row['p99'] * 1e3:7.1f}ms",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
