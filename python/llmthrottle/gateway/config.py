"""The gateway's part of `llmthrottle.toml`: where it listens, its tiers and its model routes.

    [gateway]
    listen = "127.0.0.1:8080"                  # "" for the Unix socket alone
    socket = "/run/llmthrottle/gateway.sock"   # also serve here (optional)
    workers = 2                                # processes on one port, sharing [state]
    keys_db = "/var/lib/llmthrottle/gateway-keys.sqlite"   # default: $XDG_STATE_HOME/llmthrottle/
    admin_key_env = "LLMTHROTTLE_ADMIN_KEY"    # the admin API's key, read from this variable
    jwt_secret_env = "LLMTHROTTLE_JWT_SECRET"  # HS256 bearer tokens (optional)
    jwks_file = "/etc/llmthrottle/jwks.json"   # RS256/ES256 bearer tokens (optional, needs PyJWT)
    jwt_audience = "llmthrottle"
    queue_timeout = 0                          # seconds a call may wait for its tier's limits
    budget_queue_timeout = 0                   # seconds a request may be held by a budget with
                                               # on_exceed = "queue" (0: answer 429 at once)
    budget_queue_max = 1000                    # requests a worker holds so at most; past it, 429
    [tiers.free]                               # limits per virtual key of the tier
    requests = "5/min"
    [tiers.pro]
    requests = "100/min"
    tokens = "1M/min"
    [models.fast]                              # an alias and its deployments, tried in order
    strategy = "priority"                      # or "weighted" (by weight =), "least_cost",
                                               # "lowest_latency"
    cache_ttl = 300                            # optional: identical non-streaming requests of
                                               # one tenant answered from memory for 300 s
    budget_queue_timeout = 30                  # optional: this alias's own budget_queue_timeout
    deployments = [
      {provider = "openai", model = "gpt-4o-mini", base_url = "https://api.openai.com/v1",
       api_key_env = "OPENAI_API_KEY"},
    ]
    [models.claude]                            # base_url as each provider's SDK takes it; an
                                               # alias may mix providers (chat requests are
                                               # translated, see translate/)
    deployments = [
      {provider = "anthropic", model = "claude-3-5-haiku-latest", base_url = "https://api.anthropic.com",
       api_key_env = "ANTHROPIC_API_KEY"},
    ]

`[[routes]]` choose an alias from the request (taxonomy.py). `[state]`, `[ledger]` and
`[[budgets]]` mean what they mean for the sidecar (same parsers).
Provider credentials are only ever read from the environment variables named here.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .._native import ConfigError
from ..limiter import Limiter
from ..providers.protocol import Family
from ..sidecar import config as shared
from .taxonomy import RouteRule, parse_rules

__all__ = ["Deployment", "GatewayConfig", "load_gateway_config", "parse_gateway_config", "parse_listen"]

_GATEWAY_KEYS = (
    "listen",
    "socket",
    "workers",
    "keys_db",
    "admin_key_env",
    "jwt_secret_env",
    "jwks_file",
    "jwt_audience",
    "queue_timeout",
    "budget_queue_timeout",
    "budget_queue_max",
    "request_timeout",
    "breaker_failures",
    "breaker_cooldown",
)
_DEPLOYMENT_KEYS = ("provider", "model", "base_url", "api_key_env", "name", "weight")
_ALIAS_KEYS = ("deployments", "strategy", "cache_ttl", "budget_queue_timeout")
_STRATEGIES = ("priority", "weighted", "least_cost", "lowest_latency")
_TABLES = ("gateway", "tiers", "models", "routes", "state", "ledger", "budgets")


@dataclass(frozen=True)
class Deployment:
    """One upstream a model alias may be sent to."""

    name: str
    provider: Family
    model: str
    base_url: str
    api_key_env: str | None
    weight: float = 1.0

    def api_key(self) -> str:
        """The provider credential, from the environment (never from the file)."""
        if self.api_key_env is None:
            return ""
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(f"deployment {self.name!r}: environment variable {self.api_key_env} is not set")
        return value


def default_keys_db() -> str:
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state_home, "llmthrottle", "gateway-keys.sqlite")


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # also (or, with listen = "", only) serve on this Unix socket, mode 0660
    socket: str | None = None
    listen_tcp: bool = True
    workers: int = 1
    keys_db: str = field(default_factory=default_keys_db)
    admin_key_env: str = "LLMTHROTTLE_ADMIN_KEY"
    jwt_secret_env: str | None = None
    jwks_file: str | None = None
    jwt_audience: str | None = None
    queue_timeout_s: float = 0.0
    # How long a request may be held at the end of a budget with on_exceed = "queue" (0: not at
    # all), per alias where given; and how many requests one worker holds at most.
    budget_queue_timeout_s: float = 0.0
    budget_queue_timeouts: dict[str, float] = field(default_factory=dict)
    budget_queue_max: int = 1000
    request_timeout_s: float = 600.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    # tier -> limits mapping (the llmthrottle.policy forms), applied to each virtual key
    tiers: dict[str, Any] = field(default_factory=lambda: {"default": {"requests": "600/min"}})
    # alias -> deployments in the order they are listed, and how to order them per request
    models: dict[str, list[Deployment]] = field(default_factory=dict)
    strategies: dict[str, str] = field(default_factory=dict)
    # alias -> seconds its replies are kept by the exact response cache (absent: no cache)
    cache_ttls: dict[str, float] = field(default_factory=dict)
    # [[routes]]: rules choosing the alias from the request (see taxonomy.py)
    routes: list[RouteRule] = field(default_factory=list)
    # [state], [ledger] and [[budgets]], parsed as the sidecar parses them
    shared: shared.SidecarConfig = field(default_factory=shared.SidecarConfig)
    path: str | None = None


def load_gateway_config(path: str | None) -> GatewayConfig:
    """The validated gateway configuration in `path` (the defaults when None)."""
    if path is None:
        return GatewayConfig()
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8", errors="replace")
    except OSError as error:
        raise ConfigError(f"cannot read configuration {path}: {error.strerror}") from None
    return parse_gateway_config(text, path)


def parse_gateway_config(text: str, path: str | None = None) -> GatewayConfig:
    where = shared._Where(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path or '<config>'}: invalid TOML: {error}") from None
    config = GatewayConfig(path=path)
    for table in data:
        if table not in _TABLES:
            raise where.error(
                (table,), f"{shared._unknown_key(table, _TABLES, 'table')}; expected one of {sorted(_TABLES)}"
            )
    if "state" in data:
        shared._parse_state(config.shared, _table(data, "state", where), where)
    if "ledger" in data:
        shared._parse_ledger(config.shared, _table(data, "ledger", where), where)
    if "budgets" in data:
        shared._parse_budgets(config.shared, data["budgets"], where)
    _parse_gateway(config, _table(data, "gateway", where) if "gateway" in data else {}, where)
    if not config.listen_tcp and config.socket is None:
        raise where.error(("gateway", "listen"), 'is "" (no TCP): give socket = "/path/to/gateway.sock"')
    if "tiers" in data:
        config.tiers = {}
        for name, limits in _table(data, "tiers", where).items():
            keys = ("tiers", name)
            if not isinstance(limits, dict) or not limits:
                raise where.error(keys, 'must be a table of limits, e.g. requests = "100/min"')
            try:
                Limiter(limits)  # the engine's own check of every rate, burst and quota
            except (ConfigError, ValueError) as error:
                raise where.error(keys, str(error)) from None
            config.tiers[name] = limits
    for alias, route in (_table(data, "models", where) if "models" in data else {}).items():
        config.models[alias] = _deployments(alias, route, where)
        if isinstance(route, dict) and "strategy" in route:
            config.strategies[alias] = shared._choice(
                route["strategy"], _STRATEGIES, ("models", alias, "strategy"), where
            )
        if isinstance(route, dict) and "cache_ttl" in route:
            config.cache_ttls[alias] = shared._positive(route["cache_ttl"], ("models", alias, "cache_ttl"), where)
        if isinstance(route, dict) and "budget_queue_timeout" in route:
            config.budget_queue_timeouts[alias] = _seconds(
                route["budget_queue_timeout"], ("models", alias, "budget_queue_timeout"), where
            )
    if "routes" in data:
        config.routes = parse_rules(data["routes"], config.models, where.error)
    return config


def parse_listen(text: str) -> tuple[str, int] | None:
    """(host, port) of "host:port" (an IPv6 host in brackets), or None when malformed."""
    host, _, port = text.rpartition(":")
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def _table(data: dict[str, Any], name: str, where: shared._Where) -> dict[str, Any]:
    value = data[name]
    if not isinstance(value, dict):
        raise where.error((name,), "must be a table")
    return value


def _parse_gateway(config: GatewayConfig, table: dict[str, Any], where: shared._Where) -> None:
    for key, value in table.items():
        keys = ("gateway", key)
        if key == "listen" and value == "":
            config.listen_tcp = False
        elif key == "socket":
            config.socket = shared._string(value, keys, where)
        elif key == "listen":
            address = parse_listen(shared._string(value, keys, where))
            if address is None:
                raise where.error(keys, f'must be "host:port", not {value!r}')
            config.host, config.port = address
        elif key == "workers":
            config.workers = int(shared._positive(value, keys, where, integer=True))
        elif key == "keys_db":
            config.keys_db = shared._string(value, keys, where)
        elif key == "admin_key_env":
            config.admin_key_env = shared._string(value, keys, where)
        elif key == "jwt_secret_env":
            config.jwt_secret_env = shared._string(value, keys, where)
        elif key == "jwks_file":
            config.jwks_file = shared._string(value, keys, where)
        elif key == "jwt_audience":
            config.jwt_audience = shared._string(value, keys, where)
        elif key == "queue_timeout":
            config.queue_timeout_s = _seconds(value, keys, where)
        elif key == "budget_queue_timeout":
            config.budget_queue_timeout_s = _seconds(value, keys, where)
        elif key == "budget_queue_max":
            config.budget_queue_max = int(shared._positive(value, keys, where, integer=True))
        elif key == "request_timeout":
            config.request_timeout_s = shared._positive(value, keys, where)
        elif key == "breaker_failures":
            config.breaker_failures = int(shared._positive(value, keys, where, integer=True))
        elif key == "breaker_cooldown":
            config.breaker_cooldown_s = shared._positive(value, keys, where)
        else:
            raise where.error(keys, shared._unknown_key(key, _GATEWAY_KEYS))


def _seconds(value: Any, keys: tuple[str, ...], where: shared._Where) -> float:
    """A duration in seconds that may be 0 (off), never negative or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise where.error(keys, f"must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _deployments(alias: str, route: Any, where: shared._Where) -> list[Deployment]:
    keys = ("models", alias)
    if (
        not isinstance(route, dict)
        or not set(route) <= set(_ALIAS_KEYS)
        or not isinstance(route.get("deployments"), list)
        or not route["deployments"]
    ):
        raise where.error(
            keys,
            "must be a table with deployments = [{provider, model, base_url, api_key_env}, ...] "
            f"and optionally strategy = one of {list(_STRATEGIES)}, cache_ttl = seconds and "
            "budget_queue_timeout = seconds",
        )
    out = []
    for index, entry in enumerate(route["deployments"]):
        entry_keys = (*keys, "deployments", str(index))
        if not isinstance(entry, dict):
            raise where.error(entry_keys, "must be an inline table")
        unknown = set(entry) - set(_DEPLOYMENT_KEYS)
        if unknown:
            raise where.error(entry_keys, f"unknown keys {sorted(unknown)}; expected {list(_DEPLOYMENT_KEYS)}")
        provider: Family = (
            "openai"
            if shared._choice(entry.get("provider"), ("openai", "anthropic"), (*entry_keys, "provider"), where)
            == "openai"
            else "anthropic"
        )
        model = shared._string(entry.get("model"), (*entry_keys, "model"), where)
        base_url = shared._string(entry.get("base_url"), (*entry_keys, "base_url"), where).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise where.error((*entry_keys, "base_url"), f"must be an http(s) URL, not {base_url!r}")
        env = entry.get("api_key_env")
        if env is not None:
            env = shared._string(env, (*entry_keys, "api_key_env"), where)
        name = entry.get("name") or f"{alias}#{index}:{provider}/{model}"
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < 1e9:
            raise where.error((*entry_keys, "weight"), f"must be a positive number, not {weight!r}")
        out.append(Deployment(str(name), provider, model, base_url, env, float(weight)))
    return out
