"""A gateway worker's start: what the first request would load is loaded before it comes."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmthrottle import tokens
from llmthrottle.gateway import parse_gateway_config
from llmthrottle.gateway.server import Gateway


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
