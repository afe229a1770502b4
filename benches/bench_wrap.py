"""What `lt.wrap` adds to a call: the same chat request through a bare `openai.OpenAI` and
through wrapped clients (alone, learning the limits from the headers; with a limiter; with a
guard, budgets and a ledger), then the same for `anthropic.Anthropic` (wrapped alone) and for
`openai.AsyncOpenAI` (on one event loop), against `llmthrottle fake-provider` in its own process.

    python benches/bench_wrap.py [--calls N]

Each wrapped call is timed right after a bare call of the same SDK, and is compared with the
bare calls that came just before it: each pair runs in the same state of the machine and of its
caches (a wrapped call timed after another wrapped client would flatter or wrong it). For each
client it prints the median wall time per call and the median CPU time the calling thread spent
per call, and what each adds over its bare calls. The CPU time is the figure to read on a busy
machine: the wrapper adds work, not waiting, and another process's load does not count in this
thread's CPU time (goal: <= 50 us added per call).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import anthropic
import openai

import llmthrottle as lt

MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_provider(port: int) -> subprocess.Popen[bytes]:
    # Limits far above what the run sends, so that every reply announces them (as providers do)
    # and the wrapped clients learn and follow them.
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from llmthrottle.cli import main; sys.exit(main())",
            "fake-provider",
            "--port",
            str(port),
            "--output-tokens",
            "8",
            "--rpm",
            "100000000",
            "--tpm",
            "10000000000",
            "--itpm",
            "1000000000",
            "--otpm",
            "1000000000",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/fake/counters", timeout=1).read()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the fake provider did not start")


Samples = dict[str, tuple[list[float], list[float]]]  # per client: (wall, CPU) seconds per call


def _timed(samples: Samples, name: str, started: float, started_cpu: float) -> None:
    wall, cpu = samples.setdefault(name, ([], []))
    cpu.append(time.thread_time() - started_cpu)
    wall.append(time.perf_counter() - started)


def _print_rows(bare: str, before: Samples, wrapped: Samples) -> None:
    """The bare client's line, then one per wrapped client: its medians, and what it adds over
    the bare calls made just before its own."""
    every_bare = ([w for wall, _ in before.values() for w in wall], [c for _, cpu in before.values() for c in cpu])
    rows = [(bare, every_bare, every_bare)] + [(name, before[name], wrapped[name]) for name in wrapped]
    for name, (bare_wall, bare_cpu), (wall, cpu) in rows:
        bw, bc = statistics.median(bare_wall), statistics.median(bare_cpu)
        w, c = statistics.median(wall), statistics.median(cpu)
        print(
            f"{name:24s} {w * 1e6:8.1f}us {(w - bw) * 1e6:+7.1f}us {c * 1e6:8.1f}us {(c - bc) * 1e6:+7.1f}us ({c / bc:.2f}x)"
        )


def _paired(bare: Any, clients: dict[str, Any], call: Any, calls: int) -> tuple[Samples, Samples]:
    """`calls` rounds of (a bare call, then each wrapped client's) for blocking clients, after 50
    rounds of warming up: the bare samples taken right before each client, and the client's."""
    before: Samples = {}
    wrapped: Samples = {}
    for round_ in range(50 + calls):
        for name, client in clients.items():
            started, started_cpu = time.perf_counter(), time.thread_time()
            call(bare)
            if round_ >= 50:
                _timed(before, name, started, started_cpu)
            started, started_cpu = time.perf_counter(), time.thread_time()
            call(client)
            if round_ >= 50:
                _timed(wrapped, name, started, started_cpu)
    return before, wrapped


async def _async_calls(base_url: str, calls: int) -> tuple[Samples, Samples]:
    """`_paired` for a bare `openai.AsyncOpenAI` and a wrapped one, one call at a time on one
    event loop (the loop's own work counts alike in both)."""

    def sdk() -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)

    bare, client = sdk(), lt.wrap(sdk())
    before: Samples = {}
    wrapped: Samples = {}
    for round_ in range(50 + calls):
        started, started_cpu = time.perf_counter(), time.thread_time()
        await bare.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
        if round_ >= 50:
            _timed(before, "wrap(AsyncOpenAI)", started, started_cpu)
        started, started_cpu = time.perf_counter(), time.thread_time()
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
        if round_ >= 50:
            _timed(wrapped, "wrap(AsyncOpenAI)", started, started_cpu)
    await bare.close()
    await client.close()
    return before, wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per client (default: %(default)s)")
    args = parser.parse_args()
    port = _free_port()
    provider = _start_provider(port)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        with tempfile.TemporaryDirectory() as directory:
            ledger = lt.Ledger(directory)
            limiter = lt.Limiter({"requests": "1M/min", "tokens": "1G/min"})
            guard = lt.Guard(
                lt.Limiter({"requests": "1M/min"}, budgets=[lt.Budget("team:*", 10**6, "month")]), ledger=ledger
            )

            def sdk() -> openai.OpenAI:
                return openai.OpenAI(base_url=base_url, api_key="k", max_retries=0)

            def chat(client: Any) -> None:
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)

            bare = sdk()
            clients = {
                "wrap()": lt.wrap(sdk()),
                "wrap(limiter=)": lt.wrap(sdk(), limiter=limiter),
                "wrap(guard=, ledger)": lt.wrap(sdk(), guard=guard, keys=["team:a"]),
            }
            before, wrapped = _paired(bare, clients, chat, args.calls)
            print(
                f"{args.calls} calls per client, each after a bare one; fake provider in pid {provider.pid}, "
                f"load {os.getloadavg()[0]:.2f}"
            )
            print(f"{'client':24s} {'wall p50':>10s} {'added':>9s} {'CPU p50':>10s} {'added':>9s}")
            _print_rows("bare SDK", before, wrapped)
            for client in [bare, *clients.values()]:
                client.close()
            ledger.close()

        def claude() -> anthropic.Anthropic:
            return anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="k", max_retries=0)

        def message(client: Any) -> None:
            client.messages.create(model="claude-sonnet-4-5", messages=MESSAGES, max_tokens=8)

        bare_claude, wrapped_claude = claude(), lt.wrap(claude())
        _print_rows("bare Anthropic", *_paired(bare_claude, {"wrap(Anthropic)": wrapped_claude}, message, args.calls))
        bare_claude.close()
        wrapped_claude.close()
        _print_rows("bare AsyncOpenAI", *asyncio.run(_async_calls(base_url, args.calls)))
    finally:
        provider.terminate()
        provider.wait()


if __name__ == "__main__":
    main()
