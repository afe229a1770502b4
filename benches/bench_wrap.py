"""What `lt.wrap` adds to a call: the same chat request through a bare `openai.OpenAI` and
through wrapped clients (limiter only; guard with budgets and a ledger), against the fake
provider on loopback, interleaved in one run so that machine noise hits all alike.

    python benches/bench_wrap.py [calls]

Prints the median and p90 seconds per call of each, and the added microseconds per call
(goal: <= 50 us over the bare SDK call).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import openai

import llmthrottle as lt
from llmthrottle.testing import FakeProvider

MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    with FakeProvider(output_tokens=8) as provider, tempfile.TemporaryDirectory() as directory:
        ledger = lt.Ledger(directory)
        limiter = lt.Limiter({"requests": "1M/min", "tokens": "1G/min"})
        guard = lt.Guard(
            lt.Limiter({"requests": "1M/min"}, budgets=[lt.Budget("team:*", 10**6, "month")]), ledger=ledger
        )
        base = openai.OpenAI(base_url=provider.openai_base_url, api_key="k", max_retries=0)
        clients = {
            "bare SDK": base,
            "wrap(limiter=)": lt.wrap(openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), limiter=limiter),
            "wrap(guard=, ledger)": lt.wrap(
                openai.OpenAI(base_url=provider.openai_base_url, api_key="k"), guard=guard, keys=["team:a"]
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(20):
            for client in clients.values():
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
        for _ in range(calls):
            for name, client in clients.items():
                started = time.perf_counter()
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
                times[name].append(time.perf_counter() - started)
        bare = statistics.median(times["bare SDK"])
        for name, samples in times.items():
            samples.sort()
            median, p90 = statistics.median(samples), samples[int(len(samples) * 0.9)]
            print(
                f"{name:22s} median {median * 1e6:8.1f} us  p90 {p90 * 1e6:8.1f} us  "
                f"added {(median - bare) * 1e6:+7.1f} us ({median / bare:.2f}x)"
            )
        for client in clients.values():
            client.close()
        ledger.close()


if __name__ == "__main__":
    main()
