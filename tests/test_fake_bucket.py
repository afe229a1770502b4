"""The fake provider's token buckets against llmthrottle's GCRA, side by side on one fake clock:
configured at the same RPM/TPM, whatever the limiter admits the fake provider admits too, even
at the exact instants the limiter's retry_after names. Otherwise a wrapper with the limits known
would earn 429s from the fake that a real provider, counting exactly, would not send."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmthrottle as lt
from llmthrottle.testing import FakeClock
from llmthrottle.testing.fake_provider import _Bucket

# Limits of all shapes: round, prime (the GCRA's interval rounded up), tiny, large.
RPMS = st.sampled_from([1, 7, 60, 3000, 10_000, 10_007])
TPMS = st.sampled_from([7, 1200, 60_000, 150_000, 100_003, 2_000_000])
# Each step: how to move the clock, then one request of `tokens` (as a share of the TPM).
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["boundary", "boundary", "none", "random"]),
        st.floats(min_value=0.0, max_value=1.0),  # tokens, as a share of the burst
        st.integers(min_value=0, max_value=3_000_000_000),  # a random advance, in ns
    ),
    min_size=1,
    max_size=120,
)


def side_by_side(rpm: int, tpm: int, start_s: float) -> tuple[Any, Any, dict[str, _Bucket]]:
    clock = FakeClock(start=start_s)
    limiter = lt.Limiter({"requests": f"{rpm}/min", "tokens": f"{tpm}/min"}, clock=clock)
    # The fake clock's nanoseconds (its float seconds are exact to well under a nanosecond here).
    buckets = {
        name: _Bucket(limit, clock_ns=lambda: round(clock.monotonic * 1e9))
        for name, limit in (("requests", rpm), ("tokens", tpm))
    }
    return clock, limiter, buckets


@settings(max_examples=300, deadline=None)
@given(
    rpm=RPMS,
    tpm=TPMS,
    start_s=st.sampled_from([1.0, 86_400.25, 900_000.123456789]),  # uptimes: a minute to ten days
    steps=STEPS,
)
def test_what_the_limiter_admits_the_fake_provider_admits(
    rpm: int, tpm: int, start_s: float, steps: list[tuple[str, float, int]]
) -> None:
    clock, limiter, buckets = side_by_side(rpm, tpm, start_s)
    for step, (move, share, random_ns) in enumerate(steps):
        amounts = {"requests": 1, "tokens": max(1, round(share * tpm))}
        if move == "boundary":  # to the very instant the limiter said this request fits
            seen = limiter.peek("k", **amounts)
            if not seen:
                clock.advance(seen.retry_after)
        elif move == "random":
            clock.advance(random_ns / 1e9)
        decision = limiter.try_acquire("k", **amounts)
        if not decision:
            continue
        decision.commit()
        short = {name: buckets[name].wait_for(amount) for name, amount in amounts.items()}
        assert all(wait == 0.0 for wait in short.values()), (
            f"step {step}: the limiter admitted {amounts} at {clock.monotonic!r}, "
            f"the fake provider would answer 429 (waits {short})"
        )
        for name, amount in amounts.items():
            buckets[name].take(amount)


@pytest.mark.parametrize(("rpm", "tpm"), [(10_000, 150_000), (3000, 60_000), (7, 100_003)])
def test_a_long_run_at_the_limit_never_meets_a_429(rpm: int, tpm: int) -> None:
    # A batch at its limits for ten simulated minutes: every request sent the instant the limiter
    # allows it, as the wrapper does with the limits known.
    clock, limiter, buckets = side_by_side(rpm, tpm, 900_000.123456789)
    sizes = [13, 8, 21, 5, 34, 1, 55, 3]
    admitted = 0
    while clock.monotonic < 900_000.123456789 + 600:
        amounts = {"requests": 1, "tokens": sizes[admitted % len(sizes)]}
        decision = limiter.try_acquire("k", **amounts)
        if not decision:
            clock.advance(decision.retry_after)
            continue
        decision.commit()
        short = {name: buckets[name].wait_for(amount) for name, amount in amounts.items()}
        assert all(wait == 0.0 for wait in short.values()), (admitted, short)
        for name, amount in amounts.items():
            buckets[name].take(amount)
        admitted += 1
    assert admitted > 0
