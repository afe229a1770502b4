"""What `lt.wrap` adds to a call: the same chat request through a bare `openai.OpenAI` and
through wrapped clients (alone, learning the limits from the headers; with a limiter; with a
guard, budgets and a ledger), against `llmthrottle fake-provider` in its own process, interleaved
in one run so that machine noise hits all alike.

    python benches/bench_wrap.py [--calls N]

Then the same for `openai.AsyncOpenAI`, bare and wrapped, on one event loop. For each client it
prints the median wall time per call and the median CPU time the calling
thread spent per call, and what each adds over the bare SDK. The CPU time is the figure to
read on a busy machine: the wrapper adds work, not waiting, and another process's load does not
count in this thread's CPU time (goal: <= 50 us added per call).
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


def _print_rows(wall: dict[str, list[float]], cpu: dict[str, list[float]], bare: str) -> None:
    """One line per client: its medians, and what it adds over `bare`."""
    bare_wall, bare_cpu = statistics.median(wall[bare]), statistics.median(cpu[bare])
    for name in wall:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(
            f"{name:24s} {w * 1e6:8.1f}us {(w - bare_wall) * 1e6:+7.1f}us {c * 1e6:8.1f}us "
            f"{(c - bare_cpu) * 1e6:+7.1f}us ({c / bare_cpu:.2f}x)"
        )


async def _async_calls(base_url: str, calls: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The same call through a bare `openai.AsyncOpenAI` and a wrapped one, interleaved, one at a
    time on one event loop (the loop's own work counts alike in both)."""

    def sdk() -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)

    clients = {"bare AsyncOpenAI": sdk(), "wrap(AsyncOpenAI)": lt.wrap(sdk())}
    wall: dict[str, list[float]] = {name: [] for name in clients}
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    for round_ in range(50 + calls):
        for name, client in clients.items():
            started, started_cpu = time.perf_counter(), time.thread_time()
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
            if round_ >= 50:  # the first rounds warm up
                cpu[name].append(time.thread_time() - started_cpu)
                wall[name].append(time.perf_counter() - started)
    for client in clients.values():
        await client.close()
    return wall, cpu


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

            clients = {
                "bare SDK": sdk(),
                "wrap()": lt.wrap(sdk()),
                "wrap(limiter=)": lt.wrap(sdk(), limiter=limiter),
                "wrap(guard=, ledger)": lt.wrap(sdk(), guard=guard, keys=["team:a"]),
            }
            wall: dict[str, list[float]] = {name: [] for name in clients}
            cpu: dict[str, list[float]] = {name: [] for name in clients}
            for _ in range(50):
                for client in clients.values():
                    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
            for _ in range(args.calls):
                for name, client in clients.items():
                    started, started_cpu = time.perf_counter(), time.thread_time()
                    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
                    cpu[name].append(time.thread_time() - started_cpu)
                    wall[name].append(time.perf_counter() - started)
            print(
                f"{args.calls} calls per client, interleaved; fake provider in pid {provider.pid}, load {os.getloadavg()[0]:.2f}"
            )
            print(f"{'client':24s} {'wall p50':>10s} {'added':>9s} {'CPU p50':>10s} {'added':>9s}")
            _print_rows(wall, cpu, "bare SDK")
            for client in clients.values():
                client.close()
            ledger.close()
            async_wall, async_cpu = asyncio.run(_async_calls(base_url, args.calls))
            _print_rows(async_wall, async_cpu, "bare AsyncOpenAI")
    finally:
        provider.terminate()
        provider.wait()


if __name__ == "__main__":
    main()
