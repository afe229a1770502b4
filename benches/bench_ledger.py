"""Ledger throughput: `python benches/bench_ledger.py [--records N]`.

Measures
- the cost of one `record()` call while the background flusher is idle (journal write only),
- sustained records/s end to end (record() until everything is committed to SQLite), one thread,
- the same with a concurrent reader thread querying spend() in a loop,
- the same with two writer processes sharing one ledger.
Goal: >= 50k records/s sustained.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import threading
import time

from llmthrottle.ledger import Ledger


def write(ledger: Ledger, n: int, tenant: str = "acme") -> None:
    record = ledger.record
    for i in range(n):
        record(
            model="gpt-4o",
            provider="openai",
            cost_micros=i % 5000,
            tenant=tenant,
            user=f"u{i % 100}",
            feature="chat",
            input_tokens=1200,
            output_tokens=300,
            cached_input_tokens=256,
            latency_s=0.8,
        )


def bench_record_call(n: int) -> float:
    """ns per record() with the flusher not running concurrently."""
    with tempfile.TemporaryDirectory() as d, Ledger(d, flush_interval=3600) as ledger:
        write(ledger, 1000)
        start = time.perf_counter_ns()
        write(ledger, n)
        return (time.perf_counter_ns() - start) / n


def bench_sustained(n: int, reader: bool) -> tuple[float, int]:
    """records/s from the first record() to everything committed, and reader queries done."""
    with tempfile.TemporaryDirectory() as d, Ledger(d) as ledger:
        stop = threading.Event()
        queries = 0

        def read() -> None:
            nonlocal queries
            while not stop.is_set():
                ledger.spend(tenant="acme", since=0)
                queries += 1

        thread = threading.Thread(target=read) if reader else None
        if thread:
            thread.start()
        start = time.perf_counter()
        write(ledger, n)
        ledger.flush()
        elapsed = time.perf_counter() - start
        stop.set()
        if thread:
            thread.join()
        assert len(ledger) == n
        return n / elapsed, queries


def _process_writer(path: str, n: int, tenant: str) -> None:
    with Ledger(path) as ledger:
        write(ledger, n, tenant)


def bench_processes(n: int, processes: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        Ledger(d).close()
        ctx = multiprocessing.get_context("spawn")
        workers = [ctx.Process(target=_process_writer, args=(d, n, f"p{i}")) for i in range(processes)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start  # includes interpreter start-up: a lower bound
        with Ledger(d) as ledger:
            assert len(ledger) == n * processes
        return n * processes / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=300_000)
    args = parser.parse_args()
    n = args.records
    rows = [
        ("record() call, flusher idle", f"{bench_record_call(n):,.0f} ns/call"),
    ]
    rate, _ = bench_sustained(n, reader=False)
    rows.append(("sustained, 1 writer thread", f"{rate:,.0f} records/s"))
    rate, queries = bench_sustained(n, reader=True)
    rows.append(("sustained, 1 writer + spend() reader", f"{rate:,.0f} records/s ({queries:,} spend queries)"))
    rows.append(("sustained, 2 writer processes (incl. start-up)", f"{bench_processes(n // 2, 2):,.0f} records/s"))
    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{width}}  result")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
