"""`llmthrottle gateway`: an OpenAI- and Anthropic-compatible proxy with virtual keys, tiers,
budgets, routing with failover, and every call in the ledger (see `gateway.cli`)."""

from .config import Deployment, GatewayConfig, load_gateway_config, parse_gateway_config
from .keys import Caller, KeyStore, VirtualKey

__all__ = [
    "Caller",
    "Deployment",
    "GatewayConfig",
    "KeyStore",
    "VirtualKey",
    "load_gateway_config",
    "parse_gateway_config",
]
