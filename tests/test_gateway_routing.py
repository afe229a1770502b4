"""The gateway's routing rules on their own: strategies, breakers and cool-downs."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import pytest

from llmthrottle.gateway.config import Deployment
from llmthrottle.gateway.routing import Router


def deployment(name: str, model: str = "gpt-4o-mini", weight: float = 1.0) -> Deployment:
    return Deployment(name, "openai", model, f"http://{name}/v1", None, weight)


def test_priority_keeps_the_order_and_moves_unhealthy_deployments_last() -> None:
    a, b, c = deployment("a"), deployment("b"), deployment("c")
    router = Router({"m": [a, b, c]}, failures_to_open=2, cooldown_s=0.2)
    assert router.candidates("m") == [a, b, c]
    assert router.candidates("other") is None
    router.failed(a)
    assert router.candidates("m") == [a, b, c]  # one failure: still closed
    router.failed(a)
    assert router.candidates("m") == [b, c, a]  # open
    router.cool_down(b, 0.2)
    assert router.candidates("m") == [c, a, b]
    time.sleep(0.25)
    assert router.candidates("m")[0] == a  # half-open: this request is the probe
    assert router.candidates("m")[-1] == a  # and no other request is, meanwhile
    router.succeeded(a)
    assert router.candidates("m") == [a, b, c] and router.breakers["a"].state == "closed"


def test_a_failed_probe_opens_the_breaker_again() -> None:
    a, b = deployment("a"), deployment("b")
    router = Router({"m": [a, b]}, failures_to_open=1, cooldown_s=0.1)
    router.failed(a)
    time.sleep(0.15)
    assert router.candidates("m")[0] == a
    router.failed(a)
    assert router.candidates("m") == [b, a] and router.breakers["a"].state == "open"


def test_weighted_draws_in_proportion_to_the_weights() -> None:
    heavy, light = deployment("heavy", weight=3), deployment("light", weight=1)
    router = Router({"m": [light, heavy]}, strategies={"m": "weighted"})
    firsts = collections.Counter(router.candidates("m")[0].name for _ in range(4000))  # type: ignore[index]
    assert 0.70 < firsts["heavy"] / 4000 < 0.80


def test_least_cost_puts_the_cheapest_model_first_and_unknown_ones_last() -> None:
    mini, full, mystery = deployment("mini", "gpt-4o-mini"), deployment("full", "gpt-4o"), deployment("x", "no-such")
    router = Router({"m": [full, mystery, mini]}, strategies={"m": "least_cost"})
    assert router.candidates("m") == [mini, full, mystery]


def test_lowest_latency_follows_the_moving_average() -> None:
    fast, slow = deployment("fast"), deployment("slow")
    router = Router({"m": [slow, fast]}, strategies={"m": "lowest_latency"})
    router.succeeded(slow, 0.5)
    assert router.candidates("m") == [fast, slow]  # untried first
    router.succeeded(fast, 0.1)
    assert router.candidates("m") == [fast, slow]
    for _ in range(20):
        router.succeeded(fast, 1.0)
    assert router.candidates("m") == [slow, fast]


def test_routes_choose_the_alias_from_the_request() -> None:
    from llmthrottle.gateway.taxonomy import choose_alias, parse_rules

    def error(keys: tuple[str, ...], message: str) -> Exception:
        return ValueError(f"{'.'.join(keys)}: {message}")

    models = {"cheap": [], "frontier": [], "tools": []}
    rules = parse_rules(
        [
            {"model": "auto", "alias": "tools", "tools": True},
            {"model": "auto", "alias": "frontier", "header": "x-task: hard"},
            {"model": "auto", "alias": "cheap", "max_input_tokens": 50},
            {"model": "auto", "alias": "frontier"},
        ],
        models,
        error,
    )

    def body(text: str, **extra: object) -> dict[str, object]:
        return {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}

    assert choose_alias(rules, body("hi"), {}, "openai") == "cheap"
    assert choose_alias(rules, body("word " * 500), {}, "openai") == "frontier"
    assert choose_alias(rules, body("hi", tools=[{"type": "function"}]), {}, "openai") == "tools"
    assert choose_alias(rules, body("hi"), {"x-task": "hard"}, "openai") == "frontier"
    assert choose_alias(rules, {"model": "cheap", "messages": []}, {}, "openai") == "cheap"  # a plain alias
    import pytest

    for bad, message in (
        ([{"model": "auto", "alias": "nowhere"}], "alias"),
        ([{"model": "auto", "alias": "cheap", "max_input_tokens": -1}], "non-negative"),
        ([{"model": "auto", "alias": "cheap", "header": "no-colon"}], "name: value"),
        ([{"model": "auto", "alias": "cheap", "when": 1}], "unknown keys"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_rules(bad, models, error)


def test_rs256_and_es256_tokens_from_a_jwks_file(tmp_path: Path) -> None:
    import json
    import time

    import jwt
    import pytest
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from llmthrottle.gateway.auth import Authenticator, Refused
    from llmthrottle.gateway.keys import KeyStore

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": []}
    for kid, key, alg in (("r1", rsa_key, "RS256"), ("e1", ec_key, "ES256")):
        public = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
        jwks["keys"].append({**public, "kid": kid, "alg": alg, "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    store = KeyStore(str(tmp_path / "keys.sqlite"))
    auth = Authenticator(store, jwks_file=str(path), jwt_audience="llmthrottle")
    claims = {"tenant": "acme", "team": "ml", "tier": "pro", "aud": "llmthrottle", "exp": time.time() + 60}

    def bearer(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    for kid, key, alg in (("r1", rsa_key, "RS256"), ("e1", ec_key, "ES256")):
        caller = auth.caller(bearer(jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})))
        assert (caller.tenant, caller.team, caller.tier) == ("acme", "ml", "pro")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token, message in (
        (jwt.encode(claims, other, algorithm="RS256", headers={"kid": "r1"}), "signature"),
        (jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "nope"}), "kid"),
        (
            jwt.encode({**claims, "exp": time.time() - 120}, rsa_key, algorithm="RS256", headers={"kid": "r1"}),
            "expired",
        ),
        (
            jwt.encode(claims, "a-guessed-secret-that-is-long-enough-for-hs256", algorithm="HS256"),
            "algorithm",
        ),  # no HS256 secret configured
        (jwt.encode(claims, None, algorithm="none"), "algorithm"),
    ):
        with pytest.raises(Refused, match=message):
            auth.caller(bearer(token))
    store.close()


def test_the_keys_cli_creates_lists_rotates_and_revokes_with_json_for_scripts(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    config = tmp_path / "llmthrottle.toml"
    config.write_text(f'[gateway]\nkeys_db = "{tmp_path}/keys.sqlite"\n')

    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "llmthrottle.cli", "gateway", "keys", *args, "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    made = keys("create", "--tenant", "acme", "--tier", "pro", "--models", "fast,smart", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["key"].startswith("ltk_") and (created["tenant"], created["tier"]) == ("acme", "pro")
    assert created["models"] == ["fast", "smart"] and created["revoked"] is False
    listed = [json.loads(line) for line in keys("list").stdout.splitlines()]
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]  # never the secret
    rotated = json.loads(keys("rotate", created["id"], "--json").stdout)
    assert rotated["id"] == created["id"] and rotated["key"] != created["key"]
    assert keys("revoke", created["id"]).returncode == 0
    assert keys("rotate", created["id"]).returncode == 1  # revoked: no live key
    plain = keys("create", "--tenant", "globex")
    assert plain.stdout.strip().startswith("ltk_") and "not shown again" in plain.stderr


@pytest.mark.parametrize(
    "text, address",
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9000", ("::1", 9000)),
        ("127.0.0.1:\u00b2", None),  # a superscript two is a digit to str.isdigit, not a port
        ("127.0.0.1:0", None),
        ("127.0.0.1:65536", None),
        (":8080", None),
        ("127.0.0.1", None),
    ],
)
def test_a_listen_address_is_a_host_and_a_port_in_ascii_digits(text: str, address: Any) -> None:
    from llmthrottle.gateway.config import parse_listen

    assert parse_listen(text) == address
