"""A gateway worker: what the first request would load is loaded before it comes, and the time
it reports as its own includes the wait for the caller's limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_helpers import GatewayProcess
from redis_servers import free_port

from llmthrottle import tokens
from llmthrottle.gateway import parse_gateway_config
from llmthrottle.gateway.server import Gateway
from llmthrottle.testing import FakeProvider


def test_warm_loads_each_deployments_tokenizer_and_passes_over_models_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LT_WARM_KEY", "test")
    config = parse_gateway_config(f"""
[gateway]
keys_db = "{tmp_path}/keys.sqlite"
[tiers.default]
requests = "10/min"
[models.chat]
deployments = [
  {{provider = "openai", model = "gpt-4o-mini", base_url = "http://127.0.0.1:9/v1", api_key_env = "LT_WARM_KEY"}},
  {{provider = "openai", model = "house-llama", base_url = "http://127.0.0.1:9/v1", api_key_env = "LT_WARM_KEY"}},
]
[models.embed]
deployments = [
  {{provider = "openai", model = "text-embedding-3-small", base_url = "http://127.0.0.1:9/v1", api_key_env = "LT_WARM_KEY"}},
]
""")
    gateway = Gateway(config)
    try:
        monkeypatch.setattr(tokens, "_FOR_MODEL", {})
        gateway.warm()  # the model without a tokenizer is left to be refused when asked for
        loaded = {model: encoding.name for (model, _), encoding in tokens._FOR_MODEL.items()}
        assert loaded == {"gpt-4o-mini": "o200k_base", "text-embedding-3-small": "cl100k_base"}
    finally:
        gateway.keys.close()


def test_the_overhead_header_counts_the_wait_for_the_tiers_limit(tmp_path: Path) -> None:
    with FakeProvider() as upstream:
        port = free_port()
        gateway = GatewayProcess(
            tmp_path,
            f"""
[gateway]
listen = "127.0.0.1:{port}"
keys_db = "{tmp_path}/keys.sqlite"
queue_timeout = 5
[tiers.pro]
requests = "1/2s"
[models.fast]
deployments = [{{provider = "openai", model = "gpt-4o-mini", base_url = "{upstream.openai_base_url}", api_key_env = "LT_UPSTREAM_KEY"}}]
""",
            port,
        )
        try:
            client = gateway.openai(gateway.key(tenant="acme"))
            overheads = []
            for _ in range(2):  # the second waits about two seconds for its turn
                raw = client.chat.completions.with_raw_response.create(
                    model="fast", messages=[{"role": "user", "content": "hi"}]
                )
                overheads.append(float(raw.headers["x-llmthrottle-overhead-ms"]))
            assert overheads[1] > 500 > overheads[0]
        finally:
            gateway.stop()
