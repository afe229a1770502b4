"""Budgets declared in the sidecar's policy file are enforced for every client."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest
from sidecar_helpers import start_server

import llmthrottle as lt

CONFIG = """
[limits."*"]
requests = "1000/s"

[[budgets]]
scope = "team:*"
limit_usd = 1.0
period = "day"

[[budgets]]
scope = "org:*"
limit_usd = 1.5
period = "month"
"""


@pytest.fixture
def server() -> Iterator[object]:
    with tempfile.TemporaryDirectory(prefix="lt-budget-") as directory:
        server = start_server(directory, CONFIG)
        try:
            yield server
        finally:
            server.stop()


def test_budgets_from_the_file_apply_over_http_and_the_client(server) -> None:
    status, _, body = server.http("POST", "/v1/acquire", {"key": ["team:a", "org:x"], "amounts": {"budget_usd": 0.75}})
    assert status == 200, body
    sidecar = lt.Sidecar(server.socket)
    try:
        lim = lt.Limiter(None, state=sidecar)
        assert lim.dimensions == ["requests", "budget_usd"]
        with pytest.raises(lt.BudgetExceeded):
            lim.acquire(["team:a", "org:x"], budget_usd=0.5, timeout=0)
        # Another team still fits under the org's 1.5 and its own 1.0; the org is then full.
        lim.acquire(["team:b", "org:x"], budget_usd=0.5, timeout=0).commit()
        decision = lim.try_acquire(["team:c", "org:x"], budget_usd=0.5)
        assert not decision and decision.limited_by == "budget_usd" and decision.limited_key == "org:x"
    finally:
        sidecar.close()


def test_bad_budget_entries_are_refused_with_the_entry_named() -> None:
    from llmthrottle.sidecar.config import parse_config

    with pytest.raises(lt.ConfigError, match=r"budgets\.0: .*limit_usd"):
        parse_config('[[budgets]]\nscope = "team:*"\nlimit_usd = -1\n', "llmthrottle.toml")
    with pytest.raises(lt.ConfigError, match="unknown keys"):
        parse_config('[[budgets]]\nscope = "team:*"\nlimit_usd = 1\nperiodd = "day"\n', "llmthrottle.toml")
    with pytest.raises(lt.ConfigError, match="two budgets"):
        parse_config('[[budgets]]\nscope = "t:*"\nlimit_usd = 1\n[[budgets]]\nscope = "t:*"\nlimit_usd = 2\n', "x.toml")


def test_metrics_show_spend_and_budget_remaining(server) -> None:
    status, _, body = server.http("POST", "/v1/acquire", {"key": ["team:a", "org:x"], "amounts": {"budget_usd": 0.25}})
    assert status == 200, body
    status, _, _ = server.http(
        "POST", "/v1/commit", {"reservation_id": body["reservation_id"], "usage": {"budget_usd": 0.2}}
    )
    assert status == 200
    status, _, text = server.http("GET", "/metrics")
    assert status == 200
    assert 'llmthrottle_spend_usd_total{namespace="default"} 0.2' in text
    assert 'llmthrottle_budget_remaining_usd{namespace="default",budget="team:*",key="team:a"} 0.8' in text
    assert 'llmthrottle_budget_remaining_usd{namespace="default",budget="org:*",key="org:x"} 1.3' in text


def test_metrics_show_a_peer_only_the_keys_it_may_use() -> None:
    import os

    uid = os.getuid()
    with tempfile.TemporaryDirectory(prefix="lt-budget-") as directory:
        server = start_server(directory, CONFIG)
        try:
            _, _, body = server.http(
                "POST", "/v1/acquire", {"key": ["team:a", "org:x"], "amounts": {"budget_usd": 0.25}}
            )
            server.http("POST", "/v1/commit", {"reservation_id": body["reservation_id"], "usage": {"budget_usd": 0.2}})
            server.write_config(CONFIG + f'\n[access]\n{uid} = ["team:*"]\n')
            assert server.http("POST", "/v1/reload")[0] == 200
            text = server.http("GET", "/metrics")[2]
            assert 'key="team:a"' in text
            assert 'key="org:x"' not in text  # another tenant's budget stays unseen
        finally:
            server.stop()
