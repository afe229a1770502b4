"""pytest-benchmark tests for one allowed `try_acquire` (issue 2). Off by default: pyproject's
addopts carry `--benchmark-disable --benchmark-skip`, so these are reported as skipped. Run them:

    pytest tests/test_bench_limiter.py --benchmark-enable --benchmark-only

The side-by-side comparison with peers is `python benches/bench_limiter.py`.
"""

from __future__ import annotations

import pytest

import llmthrottle as lt

KEY = "tenant-acme"
# Stats are per call: each round times ITERATIONS calls in one loop, so the timer's own cost
# is spread over them (with pytest-benchmark's default calibration a round can be one call).
ITERATIONS = 1000
ROUNDS = 200


def test_try_acquire_1_dim_1_key(benchmark) -> None:
    try_acquire = lt.Limiter({"requests": "1G/s"}).try_acquire
    decision = benchmark.pedantic(try_acquire, args=(KEY,), iterations=ITERATIONS, rounds=ROUNDS, warmup_rounds=5)
    assert decision.allowed


def test_try_acquire_2_dims_1_key(benchmark) -> None:
    try_acquire = lt.Limiter({"requests": "1G/s", "tokens": "1G/s"}).try_acquire
    decision = benchmark.pedantic(
        try_acquire, args=(KEY,), kwargs={"tokens": 10}, iterations=ITERATIONS, rounds=ROUNDS, warmup_rounds=5
    )
    assert decision.allowed


@pytest.mark.parametrize("dims", [1, 2])
def test_try_acquire_100k_keys(benchmark, dims: int) -> None:
    limits = {"requests": "1G/s", "tokens": "1G/s"} if dims == 2 else {"requests": "1G/s"}
    amounts = {"tokens": 10} if dims == 2 else {}
    try_acquire = lt.Limiter(limits).try_acquire
    keys = [f"user-{i:06d}" for i in range(100_000)]
    for key in keys:  # every key has its state before the timing starts
        assert try_acquire(key, **amounts)

    def walk() -> None:  # one call per key: the stats are per 100k calls (extra_info: per call)
        for key in keys:
            try_acquire(key, **amounts)

    benchmark.pedantic(walk, rounds=5, warmup_rounds=1)
    benchmark.extra_info["ns_per_call_min"] = round(benchmark.stats.stats.min / len(keys) * 1e9, 1)
    assert try_acquire(keys[-1], **amounts).allowed
