"""`llmthrottle gateway` as its users meet it: the real openai and anthropic SDKs pointed at a
gateway process, fake providers upstream."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import anthropic
import openai
import pytest
from gateway_helpers import ADMIN, ENV, JWT_SECRET, GatewayProcess
from provider_helpers import CHAT_REPLY, canned_server
from redis_servers import free_port

import llmthrottle as lt
from llmthrottle.gateway import KeyStore, parse_gateway_config
from llmthrottle.testing import FakeProvider


class Upstream(Protocol):
    """A provider the gateway's deployments point at (a `FakeProvider`, or a canned one)."""

    @property
    def openai_base_url(self) -> str: ...

    @property
    def anthropic_base_url(self) -> str: ...


def config_text(directory: Path, port: int, primary: Upstream, secondary: Upstream) -> str:
    return f"""
[gateway]
listen = "127.0.0.1:{port}"
keys_db = "{directory}/keys.sqlite"
admin_key_env = "LT_TEST_ADMIN"
jwt_secret_env = "LT_TEST_JWT"
jwt_audience = "llmthrottle"
breaker_failures = 2
breaker_cooldown = 60

[tiers.free]
requests = "3/min"

[tiers.pro]
requests = "1000/min"
tokens = "1M/min"

[models.fast]
deployments = [
  {{provider = "openai", model = "gpt-4o-mini", base_url = "{primary.openai_base_url}", api_key_env = "LT_UPSTREAM_KEY", name = "primary"}},
  {{provider = "openai", model = "gpt-4o-mini", base_url = "{secondary.openai_base_url}", api_key_env = "LT_UPSTREAM_KEY", name = "secondary"}},
]

[models.smart]
deployments = [
  {{provider = "openai", model = "gpt-4o", base_url = "{primary.openai_base_url}", api_key_env = "LT_UPSTREAM_KEY"}},
]

[models.cached]
cache_ttl = 300
deployments = [
  {{provider = "openai", model = "gpt-4o-mini", base_url = "{primary.openai_base_url}", api_key_env = "LT_UPSTREAM_KEY"}},
]

[models.claude]
deployments = [
  {{provider = "anthropic", model = "claude-3-5-haiku-latest", base_url = "{secondary.anthropic_base_url}", api_key_env = "LT_UPSTREAM_KEY"}},
]

[[routes]]
model = "auto"
alias = "fast"
max_input_tokens = 100

[[routes]]
model = "auto"
alias = "smart"

[[budgets]]
scope = "tenant:spender"
limit_usd = 0.0005
period = "day"

[[budgets]]
scope = "tenant:thrifty"
limit_usd = 0.0003
period = "day"
on_exceed = "downgrade"
downgrade_to = "gpt-4o-mini"

[ledger]
path = "{directory}/ledger"

[state]
kind = "in-process"
"""


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeProvider, FakeProvider]]:
    with FakeProvider() as primary, FakeProvider() as secondary:
        yield primary, secondary


@pytest.fixture
def gateway(tmp_path: Path, upstreams: tuple[FakeProvider, FakeProvider]) -> Iterator[GatewayProcess]:
    port = free_port()
    process = GatewayProcess(tmp_path, config_text(tmp_path, port, *upstreams), port)
    yield process
    process.stop()


def chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], **{"max_tokens": 20, **extra}
    )


def jwt(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    signing = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}"
    signature = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def test_a_virtual_key_calls_through_and_every_call_is_in_the_ledger(gateway: GatewayProcess, upstreams: Any) -> None:
    key = gateway.key(tenant="acme", team="support", user="42")
    with gateway.openai(key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="fast", messages=[{"role": "user", "content": "hi"}], max_tokens=20
        )
        reply = raw.parse()
        assert reply.usage.completion_tokens > 0
        assert float(raw.headers["x-llmthrottle-overhead-ms"]) >= 0
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chat(client, stream=True) if chunk.choices)
        assert text
        assert [m.id for m in client.models.list()] == ["fast", "smart", "cached", "claude"]
    assert upstreams[0].counters.requests == 2
    with anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0) as claude:
        message = claude.messages.create(model="claude", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        assert message.usage.output_tokens > 0
    gateway.stop()
    with lt.Ledger(gateway.directory / "ledger") as ledger:
        records = list(ledger.records())
    assert len(records) == 3
    assert {(r.tenant, r.team, r.user, r.outcome) for r in records} == {("acme", "support", "42", "ok")}
    assert sorted(r.tags["deployment"] for r in records) == [
        "claude#0:anthropic/claude-3-5-haiku-latest",
        "primary",
        "primary",
    ]
    assert sorted(r.tags["route"] for r in records) == ["claude", "fast", "fast"]
    assert all(r.cost_micros > 0 for r in records)


def test_keys_and_tokens_that_do_not_let_you_in(gateway: GatewayProcess) -> None:
    good = gateway.key(tenant="acme", models=["claude"])
    revoked = gateway.key(tenant="acme")
    gateway.keys.revoke(revoked.split("_")[1])
    expired = gateway.key(tenant="acme", expires_at=time.time() - 1)
    for bad in ("nonsense", "ltk_abc_def", revoked, expired, good[:-1] + "x"):
        with gateway.openai(bad) as client, pytest.raises(openai.AuthenticationError):
            chat(client)
    with gateway.openai(good) as client, pytest.raises(openai.PermissionDeniedError, match="may not use"):
        chat(client)
    now = time.time()
    token = jwt({"sub": "svc", "tenant": "acme", "tier": "pro", "aud": "llmthrottle", "exp": now + 60})
    with gateway.openai(token) as client:
        assert chat(client).usage.total_tokens > 0
    for claims in (
        {"tenant": "acme", "aud": "llmthrottle", "exp": now - 120},
        {"tenant": "acme", "aud": "someone-else", "exp": now + 60},
        {"tenant": "acme", "aud": "llmthrottle", "exp": now + 60, "nbf": now + 600},
    ):
        with gateway.openai(jwt(claims)) as client, pytest.raises(openai.AuthenticationError):
            chat(client)
    forged = jwt({"tenant": "acme", "aud": "llmthrottle", "exp": now + 60}, secret="guess")
    with gateway.openai(forged) as client, pytest.raises(openai.AuthenticationError, match="signature"):
        chat(client)


def test_a_tier_limit_is_a_429_the_sdk_can_back_off_from(gateway: GatewayProcess, upstreams: Any) -> None:
    key = gateway.key(tenant="small", tier="free")
    with gateway.openai(key) as client:
        for _ in range(3):
            chat(client)
        with pytest.raises(openai.RateLimitError) as limited:
            chat(client)
    headers = limited.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 20
    assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
    assert upstreams[0].counters.requests == 3  # the denied call never left the gateway
    with anthropic.Anthropic(
        base_url=gateway.url, api_key=gateway.key(tenant="small", tier="free"), max_retries=0
    ) as claude:
        for _ in range(3):
            claude.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.RateLimitError) as limited_anthropic:
            claude.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert limited_anthropic.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_a_budget_ends_in_insufficient_quota(gateway: GatewayProcess) -> None:
    key = gateway.key(tenant="spender")
    admitted = 0
    with gateway.openai(key) as client, pytest.raises(openai.RateLimitError) as exhausted:
        for _ in range(50):
            chat(client, max_tokens=100)
            admitted += 1
    assert 1 <= admitted < 50  # about 12 µ$ a call against 500 µ$
    assert exhausted.value.code == "insufficient_quota"


def test_routes_send_short_questions_to_the_cheap_alias(gateway: GatewayProcess) -> None:
    with gateway.openai(gateway.key(tenant="acme")) as client:
        short = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        long = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "why " * 300}])
    assert (short.model, long.model) == ("gpt-4o-mini", "gpt-4o")


def test_a_downgrade_budget_sends_its_cheaper_model_at_its_end(gateway: GatewayProcess) -> None:
    key = gateway.key(tenant="thrifty")
    models = []
    with gateway.openai(key) as client, pytest.raises(openai.RateLimitError, match="budget"):
        for _ in range(100):  # until even the cheaper model no longer fits
            reply = client.chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "hi"}], max_tokens=10
            )
            models.append(reply.model)
    # $2.50/$10 per 1M tokens first, then $0.15/$0.60 once the budget no longer fits gpt-4o
    assert models[0] == "gpt-4o" and models[-1] == "gpt-4o-mini" and models.count("gpt-4o-mini") > 2
    gateway.stop()
    with lt.Ledger(gateway.directory / "ledger") as ledger:
        recorded = [r.model for r in ledger.records() if r.tenant == "thrifty"]
    assert sorted(recorded) == sorted(models)


def test_failover_to_the_next_deployment_and_the_breaker(tmp_path: Path) -> None:
    with FakeProvider(error_rate=1.0) as broken, FakeProvider() as healthy:
        port = free_port()
        process = GatewayProcess(tmp_path, config_text(tmp_path, port, broken, healthy), port)
        try:
            with process.openai(process.key(tenant="acme")) as client:
                for _ in range(4):
                    assert chat(client).usage.total_tokens > 0
            assert healthy.counters.requests == 4
            assert broken.counters.requests == 2  # the breaker opened after two failures
            with urllib.request.urlopen(f"{process.url}/metrics") as answer:
                metrics = answer.read().decode()
            assert 'llmthrottle_gateway_breaker_state{deployment="primary"} 2' in metrics
            assert "llmthrottle_gateway_failovers_total 2" in metrics
            assert 'llmthrottle_gateway_deployment_errors_total{deployment="primary"} 2' in metrics
            assert 'llmthrottle_gateway_deployment_calls_total{deployment="secondary"} 4' in metrics
            cost = [line for line in metrics.splitlines() if 'cost_micros_total{deployment="secondary"}' in line]
            assert int(cost[0].split()[-1]) > 0
        finally:
            process.stop()
        with lt.Ledger(tmp_path / "ledger") as ledger:
            outcomes = sorted((r.tags.get("deployment"), r.outcome) for r in ledger.records())
        assert outcomes == [("primary", "error")] * 2 + [("secondary", "ok")] * 4


def test_a_reply_cut_off_or_without_usage_is_recorded_at_its_worst_case_and_not_sent_again(tmp_path: Path) -> None:
    """A deployment that answered was billed: a reply cut off after its status is a 502 to the
    caller, not failed over to the next deployment (which would bill the call twice), and a
    reply whose usage cannot be read is passed on; both are recorded at their worst case."""
    with canned_server() as broken, FakeProvider() as healthy:
        port = free_port()
        process = GatewayProcess(tmp_path, config_text(tmp_path, port, broken, healthy), port)
        try:
            with process.openai(process.key(tenant="acme")) as client:
                broken.cut_after = 20
                with pytest.raises(openai.APIStatusError) as cut:
                    chat(client)
                assert cut.value.status_code == 502 and "cut off" in cut.value.message
                broken.cut_after, broken.reply = None, {k: v for k, v in CHAT_REPLY.items() if k != "usage"}
                assert chat(client).usage is None
            assert healthy.counters.requests == 0
        finally:
            process.stop()
        with lt.Ledger(tmp_path / "ledger") as ledger:
            records = list(ledger.records())
    counted = lt.estimate({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20})
    worst = lt.worst_case_cost("gpt-4o-mini", counted.input_tokens, counted.max_output_tokens)
    assert [(r.tags["deployment"], r.outcome, r.cost_micros) for r in records] == [("primary", "unfinished", worst)] * 2


def test_the_admin_api_needs_the_admin_key(gateway: GatewayProcess) -> None:
    def admin(
        method: str, path: str, body: Any = None, key: str = ADMIN, scheme: str = "Bearer", raw: bytes | None = None
    ) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{gateway.url}{path}",
            method=method,
            data=raw if raw is not None else None if body is None else json.dumps(body).encode(),
            headers={"authorization": f"{scheme} {key}"},
        )
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert admin("GET", "/admin/keys", key="wrong")[0] == 401
    assert admin("GET", "/admin/keys", scheme="Basic ")[0] == 401  # the key, but not as a bearer token
    assert admin("POST", "/admin/keys", raw=b"[" * 100_000)[0] == 400  # nested past the parser's depth
    status, made = admin("POST", "/admin/keys", {"tenant": "acme", "tier": "pro"})
    assert status == 201 and made["key"].startswith("ltk_")
    assert admin("POST", "/admin/keys", {"tenant": "acme", "tier": "platinum"})[0] == 400
    with gateway.openai(made["key"]) as client:
        assert chat(client)
    status, rotated = admin("POST", f"/admin/keys/{made['id']}/rotate")
    assert status == 200 and rotated["key"] != made["key"]
    with gateway.openai(made["key"]) as client, pytest.raises(openai.AuthenticationError):
        chat(client)
    assert admin("POST", f"/admin/keys/{made['id']}/revoke")[0] == 200
    with gateway.openai(rotated["key"]) as client, pytest.raises(openai.AuthenticationError):
        chat(client)
    listed = admin("GET", "/admin/keys")[1]["keys"]
    assert [k["id"] for k in listed] == [made["id"]] and listed[0]["revoked_at"] is not None
    assert "key" not in listed[0]


def test_bad_requests_get_the_providers_error_shape(gateway: GatewayProcess) -> None:
    key = gateway.key(tenant="acme")
    with gateway.openai(key) as client:
        with pytest.raises(openai.NotFoundError, match="no model"):
            client.chat.completions.create(model="unknown", messages=[{"role": "user", "content": "hi"}])
    request = urllib.request.Request(
        f"{gateway.url}/v1/chat/completions", data=b"{not json", headers={"authorization": f"Bearer {key}"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request)
    assert error.value.code == 400 and "error" in json.loads(error.value.read())
    malformed = urllib.request.Request(
        f"{gateway.url}/v1/chat/completions",
        data=json.dumps({"model": "fast", "messages": "hi"}).encode(),
        headers={"authorization": f"Bearer {key}"},
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(malformed)
    assert error.value.code == 400 and "messages must be a list" in json.loads(error.value.read())["error"]["message"]


def test_the_gateway_configuration_is_checked(tmp_path: Path) -> None:
    good = parse_gateway_config(
        '[models.fast]\ndeployments = [{provider = "openai", model = "m", '
        'base_url = "http://x/v1"}]\n[tiers.free]\nrequests = "5/min"\n'
    )
    assert good.models["fast"][0].base_url == "http://x/v1" and good.tiers == {"free": {"requests": "5/min"}}
    weighted = parse_gateway_config(
        '[models.fast]\nstrategy = "weighted"\ndeployments = [{provider = "openai", '
        'model = "m", base_url = "http://x/v1", weight = 3}]\n'
    )
    assert weighted.strategies == {"fast": "weighted"} and weighted.models["fast"][0].weight == 3.0
    for text, message in (
        ('[gateway]\nlisten = "nowhere"\n', "host:port"),
        ('[models.fast]\ndeployments = [{provider = "azure", model = "m", base_url = "http://x"}]\n', "provider"),
        ('[models.fast]\ndeployments = [{provider = "openai", model = "m", base_url = "ftp://x"}]\n', "http"),
        ('[tiers.free]\nrequests = "5/fortnight"\n', "tiers.free"),
        ("[gatway]\n", "did you mean 'gateway'"),
        (
            '[models.fast]\nstrategy = "random"\ndeployments = [{provider = "openai", model = "m", base_url = "http://x"}]\n',
            "strategy",
        ),
        (
            '[models.fast]\ndeployments = [{provider = "openai", model = "m", base_url = "http://x", weight = -1}]\n',
            "weight",
        ),
    ):
        with pytest.raises(lt.ConfigError, match=message):
            parse_gateway_config(text, "llmthrottle.toml")


def test_a_deployment_whose_credential_is_not_in_the_environment_stops_the_gateway_at_start(tmp_path: Path) -> None:
    config = tmp_path / "llmthrottle.toml"
    config.write_text(
        f'[gateway]\nkeys_db = "{tmp_path}/keys.sqlite"\n[models.fast]\ndeployments = [{{provider = "openai", '
        'model = "m", base_url = "http://127.0.0.1:9/v1", api_key_env = "LT_TEST_NO_SUCH_VARIABLE"}]\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "LT_TEST_NO_SUCH_VARIABLE"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmthrottle.cli",
            "gateway",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert "environment variable LT_TEST_NO_SUCH_VARIABLE is not set" in done.stderr


def test_workers_share_one_limit(tmp_path: Path, upstreams: tuple[FakeProvider, FakeProvider]) -> None:
    port = free_port()
    text = config_text(tmp_path, port, *upstreams).replace(
        '[state]\nkind = "in-process"', f'[state]\nkind = "shared"\nname = "gw-test-{port}"'
    )
    text = text.replace("[gateway]\n", "[gateway]\nworkers = 2\n")
    process = GatewayProcess(tmp_path, text, port)
    try:
        key = process.key(tenant="small", tier="free")
        outcomes = []
        for _ in range(8):  # a new connection each time: the kernel spreads them over both workers
            with process.openai(key) as client:
                try:
                    chat(client)
                    outcomes.append("ok")
                except openai.RateLimitError:
                    outcomes.append("429")
        assert outcomes.count("ok") == 3  # 3/min for the key, not 3 per worker
    finally:
        process.stop()
        lt.SharedState.remove(f"gw-test-{port}")


def test_sighup_reloads_tiers_and_routes_keeping_the_counters(gateway: GatewayProcess) -> None:
    import signal

    key = gateway.key(tenant="small", tier="free")
    with gateway.openai(key) as client:
        for _ in range(3):
            chat(client)
        with pytest.raises(openai.RateLimitError):
            chat(client)
        text = gateway.config_path.read_text()
        text = text.replace('[tiers.free]\nrequests = "3/min"', '[tiers.free]\nrequests = {rate = "3/min", burst = 5}')
        text = text.replace(
            "[models.claude]",
            '[models.fast2]\ndeployments = [{provider = "openai", model = '
            '"gpt-4o-mini", base_url = "http://127.0.0.1:9/v1"}]\n\n[models.claude]',
        )
        gateway.config_path.write_text(text)
        gateway.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while (
            "llmthrottle_gateway_reloads_total 1"
            not in urllib.request.urlopen(f"{gateway.url}/metrics").read().decode()
        ):
            assert time.monotonic() < deadline, "the gateway did not reload"
            time.sleep(0.05)
        assert "fast2" in [m.id for m in client.models.list()]
        admitted = 0
        with pytest.raises(openai.RateLimitError):
            for _ in range(5):
                chat(client)
                admitted += 1
        assert admitted == 2  # a burst of 5 now, and the 3 calls already made still count
    gateway.config_path.write_text("[gateway]\nlisten = 'nowhere'\n")  # a broken file: the policy stays
    gateway.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert gateway.proc.poll() is None
    with urllib.request.urlopen(f"{gateway.url}/health") as answer:
        assert answer.status == 200


def test_a_unix_socket_alone(tmp_path: Path, upstreams: tuple[FakeProvider, FakeProvider]) -> None:
    import asyncio

    import aiohttp

    socket_path = tmp_path / "gateway.sock"
    import re

    text = re.sub(
        r'listen = "[^"]*"',
        f'listen = ""\nsocket = "{socket_path}"',
        config_text(tmp_path, free_port(), *upstreams),
        count=1,
    )
    config = tmp_path / "llmthrottle.toml"
    config.write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmthrottle.cli", "gateway", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ENV},
    )
    keys = KeyStore(str(tmp_path / "keys.sqlite"))
    key = keys.create(tenant="acme", tier="pro")[0]
    keys.close()

    async def call() -> tuple[int, Any]:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as session:
            async with session.post(
                "http://gateway/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
            ) as answer:
                return answer.status, await answer.json()

    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        status, reply = asyncio.run(call())
        assert status == 200 and reply["usage"]["completion_tokens"] > 0
        assert oct(socket_path.stat().st_mode & 0o777) == "0o660"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_responses_stream_through_the_gateway_and_are_priced(gateway: GatewayProcess) -> None:
    with gateway.openai(gateway.key(tenant="acme")) as client:
        whole = client.responses.create(model="fast", input="hi", max_output_tokens=20)
        assert whole.usage.output_tokens > 0
        events = list(client.responses.create(model="fast", input="hi", max_output_tokens=20, stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas and events[-1].type == "response.completed" and events[-1].response.usage.output_tokens == len(deltas)
    gateway.stop()
    with lt.Ledger(gateway.directory / "ledger") as ledger:
        records = list(ledger.records())
    assert len(records) == 2 and all(r.output_tokens > 0 and r.cost_micros > 0 for r in records)


def test_an_alias_with_cache_ttl_answers_a_tenants_repeated_request_from_memory(
    gateway: GatewayProcess, upstreams: Any
) -> None:
    primary, _ = upstreams
    with gateway.openai(gateway.key(tenant="acme")) as acme, gateway.openai(gateway.key(tenant="globex")) as globex:
        _ask_twice_and_once_more(acme, globex, primary)
    with lt.Ledger(gateway.directory / "ledger", readonly=True) as ledger:
        deadline = time.monotonic() + 20
        while not (hits := [r for r in ledger.records() if r.outcome == "cache_hit"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [(r.tenant, r.cost_micros, r.tags.get("route")) for r in hits] == [("acme", 0, "cached")]


def _ask_twice_and_once_more(acme: openai.OpenAI, globex: openai.OpenAI, primary: FakeProvider) -> None:
    question = [{"role": "user", "content": "what is the capital of France?"}]
    first = acme.chat.completions.with_raw_response.create(model="cached", messages=question, max_tokens=20)
    before = primary.counters.requests
    again = acme.chat.completions.with_raw_response.create(model="cached", messages=question, max_tokens=20)
    assert again.headers.get("x-llmthrottle-cache") == "hit" and primary.counters.requests == before
    assert again.parse().id == first.parse().id
    # Another tenant's identical request is its own: it reaches the provider.
    other = globex.chat.completions.with_raw_response.create(model="cached", messages=question, max_tokens=20)
    assert other.headers.get("x-llmthrottle-cache") is None and primary.counters.requests == before + 1
