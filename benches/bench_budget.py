"""The cost a budget adds to a decision, and ledger throughput while decisions run.

    python benches/bench_budget.py

Prints ns per allowed `try_acquire` from Python with rate limits only and with the same limits
plus a calendar budget and a rolling budget (goal: a budget adds <= 100 ns), measured in one
run, best of several repeats.
"""

from __future__ import annotations

import gc
import time

import llmthrottle as lt

N = 200_000
REPEATS = 7


def per_call_ns(fn, *args, **kwargs) -> float:
    for _ in range(10_000):
        fn(*args, **kwargs)
    best = float("inf")
    gc.disable()
    try:
        for _ in range(REPEATS):
            start = time.perf_counter_ns()
            for _ in range(N):
                fn(*args, **kwargs)
            best = min(best, (time.perf_counter_ns() - start) / N)
    finally:
        gc.enable()
    return best


def main() -> None:
    limits = {"requests": "1G/s", "tokens": "1G/s"}
    plain = lt.Limiter(limits)
    calendar = lt.Limiter(limits, budgets=[lt.Budget("team:*", 100_000_000, "month")])
    rolling = lt.Limiter(limits, budgets=[lt.Budget("team:*", 100_000_000, "30d")])
    hierarchy = lt.Limiter(
        limits,
        budgets=[lt.Budget("user:*", 1e8, "day"), lt.Budget("team:*", 1e8, "month"), lt.Budget("org:*", 1e8, "month")],
    )
    rows = [
        ("rate limits only (2 dims), 1 key", per_call_ns(plain.try_acquire, "team:a", tokens=10)),
        ("+ calendar budget (month)", per_call_ns(calendar.try_acquire, "team:a", tokens=10, budget_usd=0.001)),
        ("+ rolling budget (30d)", per_call_ns(rolling.try_acquire, "team:a", tokens=10, budget_usd=0.001)),
        ("rate limits only, 3 keys", per_call_ns(plain.try_acquire, ["user:1", "team:a", "org:x"], tokens=10)),
        (
            "+ 3 budgets on 3 keys",
            per_call_ns(hierarchy.try_acquire, ["user:1", "team:a", "org:x"], tokens=10, budget_usd=0.001),
        ),
    ]
    base1, base3 = rows[0][1], rows[3][1]
    print("| decision | ns per call | added by budgets |")
    print("|---|---:|---:|")
    for i, (name, ns) in enumerate(rows):
        base = base1 if i < 3 else base3
        added = "" if ns is base else f"{ns - base:+.0f} ns"
        print(f"| {name} | {ns:.0f} | {added} |")


if __name__ == "__main__":
    main()
