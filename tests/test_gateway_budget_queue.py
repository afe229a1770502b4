"""Budgets with `on_exceed = "queue"` at the gateway: a request past the budget is held until the
budget has room again, within `budget_queue_timeout` and for at most `budget_queue_max` requests
at a time, while a tier's rate limit still answers 429 at once."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from gateway_helpers import GatewayProcess
from redis_servers import free_port

import llmthrottle as lt
from llmthrottle.gateway import parse_gateway_config
from llmthrottle.testing import FakeProvider

# A call of "hi" with max_tokens=20 to gpt-4o-mini is admitted at 14 µ$ (its worst case) and costs
# 11 µ$ once the 16 tokens of the reply are known: 30 µ$ admits two calls, then drains at
# 30 µ$ per period.


def config_text(directory: Path, port: int, upstream: FakeProvider) -> str:
    deployments = f'[{{provider = "openai", model = "gpt-4o-mini", base_url = "{upstream.openai_base_url}"}}]'
    return f"""
[gateway]
listen = "127.0.0.1:{port}"
keys_db = "{directory}/keys.sqlite"
budget_queue_timeout = 20
budget_queue_max = 1

[tiers.pro]
requests = "1000/min"

[tiers.free]
requests = "2/min"

[models.fast]
deployments = {deployments}

[models.impatient]
budget_queue_timeout = 0
deployments = {deployments}

[[budgets]]
scope = "tenant:quick"
limit_usd = 0.00003
period = "3s"
on_exceed = "queue"

[[budgets]]
scope = "tenant:slow"
limit_usd = 0.00003
period = "20s"
on_exceed = "queue"

[[budgets]]
scope = "tenant:monthly"
limit_usd = 0.00003
period = "month"
on_exceed = "queue"

[ledger]
path = "{directory}/ledger"

[state]
kind = "in-process"
"""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[GatewayProcess, FakeProvider]]:
    with FakeProvider() as upstream:
        port = free_port()
        process = GatewayProcess(tmp_path, config_text(tmp_path, port, upstream), port)
        yield process, upstream
        process.stop()


def ask(client: openai.OpenAI, model: str = "fast") -> str:
    """ "ok", or the code of the 429."""
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=20)
        return "ok"
    except openai.RateLimitError as limited:
        return str(limited.code)


def metrics(gateway: GatewayProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"{gateway.url}/metrics") as answer:
        lines = answer.read().decode().splitlines()
    return {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("llmthrottle_gateway_budget")}


def test_a_request_past_a_queue_budget_is_held_until_the_budget_has_room(gateway: Any) -> None:
    process, upstream = gateway
    with process.openai(process.key(tenant="quick")) as client:
        outcomes = [ask(client) for _ in range(4)]  # 44 µ$ against 30 µ$ per 3 s
    assert outcomes == ["ok"] * 4
    assert metrics(process)["llmthrottle_gateway_budget_held_total"] >= 1
    assert upstream.counters.requests == 4
    process.stop()
    with lt.Ledger(process.directory / "ledger") as ledger:
        assert [r.outcome for r in ledger.records()] == ["ok"] * 4


def test_the_queue_is_bounded_and_timeouts_or_far_budgets_answer_at_once(gateway: Any) -> None:
    process, upstream = gateway
    key = process.key(tenant="slow")
    with process.openai(key) as client:
        assert [ask(client), ask(client)] == ["ok", "ok"]  # the budget's room is now 8 µ$, 1.5 µ$/s more
        # An alias that does not hold requests answers at once.
        assert ask(client, "impatient") == "insufficient_quota"
    assert metrics(process)["llmthrottle_gateway_budget_held_total"] == 0
    outcomes: list[str] = []

    def one() -> None:
        with process.openai(key) as client:
            outcomes.append(ask(client))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One place in the queue: one request waits its turn (about 4 s), the two others are refused.
    assert sorted(outcomes) == ["insufficient_quota", "insufficient_quota", "ok"]
    counted = metrics(process)
    assert counted["llmthrottle_gateway_budget_held_total"] == 1
    assert counted["llmthrottle_gateway_budget_queue_full_total"] == 2
    assert counted["llmthrottle_gateway_budget_waiting"] == 0
    assert upstream.counters.requests == 3

    # A calendar budget has no room before next month, past the timeout: refused at once.
    with process.openai(process.key(tenant="monthly")) as client:
        assert [ask(client), ask(client), ask(client)] == ["ok", "ok", "insufficient_quota"]
    # A tier's rate limit answers 429 at once, whatever the budget.
    with process.openai(process.key(tenant="quick", tier="free")) as client:
        assert [ask(client), ask(client), ask(client)] == ["ok", "ok", "rate_limit_exceeded"]
    assert metrics(process)["llmthrottle_gateway_budget_held_total"] == 1


def test_a_held_request_whose_caller_went_away_leaves_the_queue_and_is_never_sent(gateway: Any) -> None:
    process, upstream = gateway
    key = process.key(tenant="slow")
    with process.openai(key) as client:
        assert [ask(client), ask(client)] == ["ok", "ok"]  # the next call fits in about 4 s
    body = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20})
    caller = socket.create_connection(("127.0.0.1", process.port))
    caller.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    deadline = time.monotonic() + 10
    while metrics(process)["llmthrottle_gateway_budget_waiting"] != 1:
        assert time.monotonic() < deadline, "the request was not held"
        time.sleep(0.05)
    caller.close()
    while metrics(process)["llmthrottle_gateway_budget_waiting"] != 0:
        assert time.monotonic() < deadline, "the request stayed in the queue"
        time.sleep(0.05)
    time.sleep(5)  # past the moment the budget had room for it
    assert upstream.counters.requests == 2


def test_the_budget_queue_settings_are_checked() -> None:
    deployments = '[{provider = "openai", model = "m", base_url = "http://x/v1"}]'
    good = parse_gateway_config(
        f"[gateway]\nbudget_queue_timeout = 2.5\nbudget_queue_max = 10\n"
        f"[models.fast]\nbudget_queue_timeout = 0\ndeployments = {deployments}\n"
    )
    assert (good.budget_queue_timeout_s, good.budget_queue_max, good.budget_queue_timeouts) == (2.5, 10, {"fast": 0.0})
    assert parse_gateway_config("").budget_queue_timeout_s == 0.0  # by default a queue budget rejects
    for text in (
        "[gateway]\nbudget_queue_timeout = -1\n",
        "[gateway]\nbudget_queue_timeout = inf\n",
        '[gateway]\nbudget_queue_timeout = "30s"\n',
        "[gateway]\nbudget_queue_max = 0\n",
        "[gateway]\nbudget_queue_max = 1.5\n",
        f"[models.fast]\nbudget_queue_timeout = -3\ndeployments = {deployments}\n",
    ):
        with pytest.raises(lt.ConfigError, match="budget_queue"):
            parse_gateway_config(text, "llmthrottle.toml")


@pytest.mark.parametrize("value", ["-1", "inf", "nan", '"5s"', "true", "1e12"])
def test_the_tier_queue_timeout_is_a_finite_number_of_seconds(value: str) -> None:
    """`queue_timeout` (how long a call may wait for its tier's limits) is read by the same
    rule as the budget queue's: an infinite or enormous wait would hold a caller forever."""
    assert parse_gateway_config("[gateway]\nqueue_timeout = 2.5\n").queue_timeout_s == 2.5
    with pytest.raises(lt.ConfigError, match="queue_timeout"):
        parse_gateway_config(f"[gateway]\nqueue_timeout = {value}\n", "llmthrottle.toml")
