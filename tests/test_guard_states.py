"""Guard behaves the same over every state: in this process, shared memory, Redis (standalone
and Cluster), and the sidecar (where the budgets come from the sidecar's policy file)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sidecar_helpers import start_server

import llmthrottle as lt
from llmthrottle.budget import Budget

MINI = "gpt-4o-mini"  # $0.15 input, $0.60 output per 1M tokens
BUDGET = Budget("team:*", 0.001, "day")  # 1,000 µ$
SIDECAR_CONFIG = '[limits."*"]\nrequests = "1000/s"\n[[budgets]]\nscope = "team:*"\nlimit_usd = 0.001\nperiod = "day"\n'


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}


@pytest.fixture(params=["in-process", "shared", "redis", "redis-cluster", "sidecar"])
def limiter(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "in-process":
        yield lt.Limiter({"requests": "1000/s"}, budgets=[BUDGET])
    elif request.param == "shared":
        name = f"guard-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        yield lt.Limiter({"requests": "1000/s"}, budgets=[BUDGET], state=lt.SharedState(name))
        lt.SharedState.remove(name)
    elif request.param.startswith("redis"):
        cluster = request.param == "redis-cluster"
        server = request.getfixturevalue("redis_cluster" if cluster else "redis_server")
        state = lt.RedisState(server.url, prefix=f"guard{uuid.uuid4().hex[:8]}:", cluster=cluster)
        yield lt.Limiter({"requests": "1000/s"}, budgets=[BUDGET], state=state)
        state.close()
    else:
        with tempfile.TemporaryDirectory(prefix="lt-guard-") as directory:
            server = start_server(directory, SIDECAR_CONFIG)
            sidecar = lt.Sidecar(server.socket)
            try:
                yield lt.Limiter(None, state=sidecar)
            finally:
                sidecar.close()
                server.stop()


def used_micros(limiter: Any, key: str) -> int:
    return round(next(s.used for s in limiter.status(key) if s.dimension == "budget_usd") * 1_000_000)


def test_guard_admits_charges_refuses_and_records_the_same_way(limiter: Any, tmp_path: Path) -> None:
    assert isinstance(limiter, lt.Limiter)
    assert [b.scope for b in limiter.budgets] == ["team:*"]
    with lt.Ledger(tmp_path / "ledger") as ledger:
        guard = lt.Guard(limiter, ledger=ledger)
        with guard.call("team:a", model=MINI, input_tokens=1000, max_output_tokens=100) as call:
            assert used_micros(limiter, "team:a") == 150 + 60  # the worst case, while in flight
            call.finish(usage(1000, 10))
        assert used_micros(limiter, "team:a") == 150 + 6  # reconciled to the real cost
        with pytest.raises(RuntimeError):
            with guard.call("team:a", model=MINI, input_tokens=1000, max_output_tokens=100):
                raise RuntimeError("the provider call failed")
        assert used_micros(limiter, "team:a") == 156  # refunded
        admitted = 0
        with pytest.raises(lt.BudgetExceeded) as exceeded:
            while True:
                guard.call("team:a", model=MINI, input_tokens=1000, max_output_tokens=100).finish(usage(1000, 100))
                admitted += 1
        assert admitted == (1000 - 156) // 210
        assert exceeded.value.key == "team:a" and exceeded.value.budget.scope == "team:*"
        # Another team has its own budget.
        guard.call("team:b", model=MINI, input_tokens=1000, max_output_tokens=100).finish(usage(1, 1))
        ledger.flush()
        outcomes = [r.outcome for r in ledger.records()]
        assert outcomes == ["ok", "error"] + ["ok"] * admitted + ["ok"]
        assert ledger.spend() == used_micros(limiter, "team:a") + used_micros(limiter, "team:b")
