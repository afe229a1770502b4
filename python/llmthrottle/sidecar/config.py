"""The sidecar's policy file, `llmthrottle.toml`: loading, validation and the embedded default.

    [server]
    socket = "/run/llmthrottle/llmthrottle.sock"  # default: see default_socket_path()
    socket_mode = "0660"
    socket_group = "llmthrottle"                  # default: the server's own group
    reservation_timeout = 600                     # seconds before an unsettled call is committed
    idle_timeout = 300                            # seconds before an idle connection is closed
    max_frame_bytes = 1048576
    max_connections = 20000
    log_format = "text"                           # or "json" (one JSON object per line)
    log_level = "info"
    [state]
    kind = "in-process"                           # or "shared" (llmthrottle.SharedState(name)),
                                                  # or "redis" (llmthrottle.RedisState(url)):
    name = "llmthrottle"
    capacity = 65536                              # keys x limits the shared table holds
    # url = "redis://cache:6379/0"                # kind = "redis": sidecars on several hosts
                                                  #   sharing one server share the limits;
                                                  #   "rediss://user:password@cache:6380/0"
                                                  #   for TLS and an ACL user
    # ssl_ca_certs = "/etc/redis/ca.pem"          # TLS: the CA that signed the server's
    # ssl_certfile = "/etc/redis/client.pem"      #   certificate; a client certificate and
    # ssl_keyfile = "/etc/redis/client.key"       #   its key when the server asks for one
    # prefix = "llmthrottle:"
    # cluster = false
    # timeout = 0.5
    # on_unavailable = "fail_closed"              #   or "fail_open", "local"
    # local_fraction = 1.0                        #   this host's share when "local"
    # replay_dir = "/var/lib/llmthrottle/replay"  #   usage Redis could not take, kept on disk
    [ledger]
    path = "/var/lib/llmthrottle/ledger"          # a llmthrottle.ledger.Ledger directory
    group_access = false                          # true: files 0660, for writers in one group
    [limits."*"]                                  # namespace "default": pattern -> limits
    requests = "500/min"
    [namespaces.batch.limits."team:*"]            # namespace "batch"
    tokens = "1M/min"
    [access]                                      # uid or user name -> allowed key patterns
    1000 = ["*"]
    alice = ["tenant:acme:*"]

Every error names the offending key path and, when it can be found, the file's line. Extending
the file means adding a table name to `_TABLES` and a parser for it; unknown tables and keys
are errors, so a typo never silently drops a limit.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._native import ConfigError, parse_period
from ..policy import RulesConfig

__all__ = [
    "DEFAULT_RULES",
    "SidecarConfig",
    "default_socket_path",
    "find_config_file",
    "load_config",
    "parse_config",
]

# What `llmthrottle serve` enforces without a policy file, for namespace "default": generous
# enough not to surprise a first run, strict enough to stop a runaway loop.
DEFAULT_RULES: dict[str, dict[str, Any]] = {
    "*": {"requests": "600/min", "tokens": "2M/min", "concurrency": 64},
}

_CONFIG_LOCATIONS = ("llmthrottle.toml", "/etc/llmthrottle/llmthrottle.toml")


def default_socket_path() -> str:
    """`$LLMTHROTTLE_SOCKET`, else `$XDG_RUNTIME_DIR/llmthrottle.sock`, else a per-user path
    in /tmp. The server and the client compute the same default."""
    explicit = os.environ.get("LLMTHROTTLE_SOCKET")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "llmthrottle.sock")
    return f"/tmp/llmthrottle-{os.getuid()}.sock"


def default_ledger_path() -> str:
    """`$XDG_STATE_HOME/llmthrottle/ledger`, else `~/.local/state/llmthrottle/ledger`: durable
    across reboots, unlike the socket's runtime directory."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state_home, "llmthrottle", "ledger")


def default_state_name(socket: str) -> str:
    """The shared-memory table of the sidecar listening on `socket`: one per socket path, so
    two sidecars on one host never share counters by accident."""
    digest = hashlib.sha256(os.path.abspath(socket).encode()).hexdigest()[:16]
    return f"sidecar-{digest}"


def find_config_file() -> str | None:
    """`$LLMTHROTTLE_CONFIG`, else ./llmthrottle.toml, else /etc/llmthrottle/llmthrottle.toml,
    else None (the embedded default policy)."""
    explicit = os.environ.get("LLMTHROTTLE_CONFIG")
    if explicit:
        return explicit
    return next((path for path in _CONFIG_LOCATIONS if os.path.isfile(path)), None)


@dataclass
class SidecarConfig:
    """A validated policy file (or the embedded default)."""

    socket: str = field(default_factory=default_socket_path)
    socket_mode: int = 0o660
    socket_group: str | None = None
    reservation_timeout_s: float = 600.0
    idle_timeout_s: float = 300.0
    max_frame_bytes: int = 1 << 20
    max_connections: int = 20_000
    max_reservations: int = 100_000
    # Unsettled reservations one uid may hold: no tenant can take every slot from the others.
    max_reservations_per_uid: int = 10_000
    # Concurrency slots one uid's reservations may hold; None: a quarter of the shared table's
    # lease capacity (no cap for states without a lease table), so no tenant takes them all.
    max_slots_per_uid: int | None = None
    log_format: str = "text"
    log_level: str = "info"
    state_kind: str = "shared"
    # None: one table per socket path (default_state_name)
    state_name: str | None = None
    # None: SharedState's default; only for kind = "shared"
    state_capacity: int | None = None
    # None: SharedState's default (16,384 concurrency units held at once, all processes)
    state_lease_capacity: int | None = None
    # kind = "redis": the URL and RedisState's keyword options (prefix, cluster, timeout, ...)
    state_url: str | None = None
    state_redis_options: dict[str, Any] = field(default_factory=dict)
    # None: no ledger ([ledger] enabled = false)
    ledger_path: str | None = field(default_factory=default_ledger_path)
    # True: the ledger's files are 0660 (shared with its directory's group), else 0600
    ledger_group_access: bool = False
    # namespace -> key pattern -> limits mapping (the llmthrottle.policy forms)
    namespaces: dict[str, RulesConfig] = field(default_factory=lambda: {"default": DEFAULT_RULES})
    # namespace -> budgets (from [[budgets]] entries)
    budgets: dict[str, list[Any]] = field(default_factory=dict)
    # uid -> allowed key patterns; None: no restriction beyond the socket's permissions
    access: dict[int, list[str]] | None = None
    # patterns for peers whose uid is not listed (the `"*"` entry of [access])
    access_default: list[str] | None = None
    path: str | None = None


class _Where:
    """Turns a key path into "file:line: key.path" for error messages."""

    def __init__(self, path: str | None, text: str) -> None:
        self.path = path or "<config>"
        self.lines = text.splitlines()

    def error(self, keys: tuple[str, ...], message: str) -> ConfigError:
        dotted = ".".join(_quote(k) for k in keys)
        line = self._line_of(keys)
        place = f"{self.path}:{line}" if line else self.path
        return ConfigError(f"{place}: {dotted}: {message}" if dotted else f"{place}: {message}")

    def _line_of(self, keys: tuple[str, ...]) -> int | None:
        # Best effort: the line of `key =` under the header of its table, or of the header.
        for split in range(len(keys), -1, -1):
            table, rest = keys[:split], keys[split:]
            header = _header_line(self.lines, table) if table else 0
            if header is None:
                continue
            if not rest:
                return header or None
            pattern = re.compile(r"^\s*" + _key_regex(rest[0]) + r"\s*=")
            for number in range(header, len(self.lines)):
                text = self.lines[number]
                if number > header and text.lstrip().startswith("["):
                    break
                if pattern.match(text):
                    return number + 1
        return None


def _quote(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def _key_regex(key: str) -> str:
    return r"(?:" + re.escape(key) + r"|\"" + re.escape(key) + r"\"|'" + re.escape(key) + r"')"


def _header_line(lines: list[str], table: tuple[str, ...]) -> int | None:
    dotted = r"\s*\.\s*".join(_key_regex(k) for k in table)
    pattern = re.compile(r"^\s*\[\s*" + dotted + r"\s*\]")
    for number, text in enumerate(lines):
        if pattern.match(text):
            return number + 1
    # `("budgets", "2")`: the third `[[budgets]]` table.
    if len(table) > 1 and table[-1].isdigit():
        headers = re.compile(r"^\s*\[\[\s*" + r"\s*\.\s*".join(_key_regex(k) for k in table[:-1]) + r"\s*\]\]")
        found = [number + 1 for number, text in enumerate(lines) if headers.match(text)]
        if int(table[-1]) < len(found):
            return found[int(table[-1])]
    return None


def load_config(path: str | None) -> SidecarConfig:
    """The validated configuration in `path`, or the embedded default when `path` is None."""
    if path is None:
        return SidecarConfig()
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as error:
        raise ConfigError(f"cannot read policy file {path}: {error.strerror}") from None
    return parse_config(raw.decode("utf-8", errors="replace"), path)


def parse_config(text: str, path: str | None = None) -> SidecarConfig:
    """Validates TOML `text` (the content of `path`) into a `SidecarConfig`."""
    where = _Where(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path or '<config>'}: invalid TOML: {error}") from None
    config = SidecarConfig(path=path, namespaces={})
    for table in data:
        if table not in _TABLES:
            raise where.error((table,), f"{_unknown_key(table, _TABLES, 'table')}; expected one of {sorted(_TABLES)}")
    for table, parse in _TABLES.items():
        if table in data:
            value = data[table]
            if table == "budgets":
                _parse_budgets(config, value, where)
                continue
            if not isinstance(value, dict):
                raise where.error((table,), "must be a table")
            parse(config, value, where)
    if not config.namespaces:
        config.namespaces = {"default": DEFAULT_RULES}
    return config


_SERVER_KEYS = (
    "socket",
    "socket_mode",
    "socket_group",
    "reservation_timeout",
    "idle_timeout",
    "max_frame_bytes",
    "max_connections",
    "max_reservations",
    "max_reservations_per_uid",
    "max_slots_per_uid",
    "log_format",
    "log_level",
)


def _unknown_key(name: str, known: Any, what: str = "key") -> str:
    """'unknown key', with the closest known name when there is one."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"unknown {what}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _parse_server(config: SidecarConfig, table: dict[str, Any], where: _Where) -> None:
    for key, value in table.items():
        keys = ("server", key)
        if key == "socket":
            config.socket = _string(value, keys, where)
        elif key == "socket_mode":
            mode = _string(value, keys, where) if isinstance(value, str) else value
            try:
                config.socket_mode = int(mode, 8) if isinstance(mode, str) else int(mode)
            except (TypeError, ValueError):
                raise where.error(keys, f'must be an octal string such as "0660", not {value!r}') from None
            if not 0 <= config.socket_mode <= 0o777:
                raise where.error(keys, f"{value!r} is not a permission mode")
        elif key == "socket_group":
            config.socket_group = _string(value, keys, where)
        elif key == "reservation_timeout":
            config.reservation_timeout_s = _positive(value, keys, where)
        elif key == "idle_timeout":
            config.idle_timeout_s = _positive(value, keys, where)
        elif key == "max_frame_bytes":
            config.max_frame_bytes = int(_positive(value, keys, where, integer=True))
        elif key == "max_connections":
            config.max_connections = int(_positive(value, keys, where, integer=True))
        elif key == "max_reservations":
            config.max_reservations = int(_positive(value, keys, where, integer=True))
        elif key == "max_reservations_per_uid":
            config.max_reservations_per_uid = int(_positive(value, keys, where, integer=True))
        elif key == "max_slots_per_uid":
            config.max_slots_per_uid = int(_positive(value, keys, where, integer=True))
        elif key == "log_format":
            config.log_format = _choice(value, ("text", "json"), keys, where)
        elif key == "log_level":
            config.log_level = _choice(value, ("debug", "info", "warning", "error"), keys, where)
        else:
            raise where.error(keys, _unknown_key(key, _SERVER_KEYS))


_REDIS_OPTIONS = {
    "prefix": str,
    "cluster": bool,
    "timeout": float,
    "on_unavailable": str,
    "local_fraction": float,
    "retry_interval": float,
    "holder_ttl": float,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "replay_dir": str,
}
_STATE_KEYS = ("kind", "name", "capacity", "lease_capacity", "url", *_REDIS_OPTIONS)


def _parse_state(config: SidecarConfig, table: dict[str, Any], where: _Where) -> None:
    for key, value in table.items():
        if key == "kind":
            config.state_kind = _choice(value, ("in-process", "shared", "redis"), ("state", key), where)
        elif key == "name":
            config.state_name = _string(value, ("state", key), where)
        elif key == "capacity":
            config.state_capacity = int(_positive(value, ("state", key), where, integer=True))
        elif key == "lease_capacity":
            config.state_lease_capacity = int(_positive(value, ("state", key), where, integer=True))
        elif key == "url":
            config.state_url = _string(value, ("state", key), where)
        elif key in _REDIS_OPTIONS:
            wanted = _REDIS_OPTIONS[key]
            if wanted is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, wanted):
                raise where.error(("state", key), f"must be a {wanted.__name__}")
            config.state_redis_options[key] = value
        else:
            raise where.error(("state", key), _unknown_key(key, _STATE_KEYS))
    for key, value in (("capacity", config.state_capacity), ("lease_capacity", config.state_lease_capacity)):
        if value is not None and config.state_kind != "shared":
            raise where.error(("state", key), 'sizes a shared table: it needs kind = "shared"')
    redis_keys = [key for key in ("url", *_REDIS_OPTIONS) if key in table]
    if config.state_kind == "redis" and config.state_url is None:
        raise where.error(("state", "url"), 'kind = "redis" needs the server\'s url, e.g. "redis://cache:6379/0"')
    if config.state_kind != "redis" and redis_keys:
        raise where.error(("state", redis_keys[0]), 'configures Redis: it needs kind = "redis"')


def _parse_ledger(config: SidecarConfig, table: dict[str, Any], where: _Where) -> None:
    for key, value in table.items():
        if key == "path":
            config.ledger_path = _string(value, ("ledger", key), where)
        elif key in ("enabled", "group_access"):
            if not isinstance(value, bool):
                raise where.error(("ledger", key), "must be true or false")
            if key == "group_access":
                config.ledger_group_access = value
            elif not value:
                config.ledger_path = None
        else:
            raise where.error(("ledger", key), _unknown_key(key, ("path", "enabled", "group_access")))


def _parse_limits(config: SidecarConfig, table: dict[str, Any], where: _Where) -> None:
    config.namespaces["default"] = _rules(table, ("limits",), where)


def _parse_namespaces(config: SidecarConfig, table: dict[str, Any], where: _Where) -> None:
    for name, namespace in table.items():
        keys = ("namespaces", name)
        if not isinstance(namespace, dict) or set(namespace) != {"limits"}:
            raise where.error(keys, "must hold exactly one table, `limits` (pattern -> limits)")
        if name == "default" and "default" in config.namespaces:
            raise where.error(keys, "namespace default is already defined by [limits]")
        config.namespaces[name] = _rules(namespace["limits"], (*keys, "limits"), where)


_BUDGET_KEYS = ("scope", "limit_usd", "period", "on_exceed", "downgrade_to", "thresholds", "name")


def _parse_budgets(config: SidecarConfig, entries: Any, where: _Where) -> None:
    """`[[budgets]]` entries: the fields of `llmthrottle.Budget`, plus `namespace`."""
    from ..budget import Budget

    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise where.error(("budgets",), 'must be an array of tables: [[budgets]] scope = "team:*" ...')
    for index, entry in enumerate(entries):
        keys = ("budgets", str(index))
        unknown = set(entry) - {*_BUDGET_KEYS, "namespace"}
        if unknown:
            raise where.error(keys, f"unknown keys {sorted(unknown)}; expected {[*_BUDGET_KEYS, 'namespace']}")
        fields = {k: v for k, v in entry.items() if k != "namespace"}
        if isinstance(fields.get("period"), str):
            try:
                parse_period(fields["period"])
            except ConfigError as error:
                raise where.error((*keys, "period"), str(error)) from None
        if "thresholds" in fields and isinstance(fields["thresholds"], list):
            fields["thresholds"] = tuple(fields["thresholds"])
        try:
            budget = Budget(**fields)
        except TypeError as error:
            raise where.error(keys, f"scope and limit_usd are required ({error})") from None
        except ConfigError as error:
            raise where.error(keys, str(error)) from None
        namespace = entry.get("namespace", "default")
        if not isinstance(namespace, str) or not namespace:
            raise where.error((*keys, "namespace"), "must be a non-empty string")
        config.budgets.setdefault(namespace, []).append(budget)
    for namespace, budgets in config.budgets.items():
        from ..budget import budget_rules

        try:
            budget_rules(budgets)
        except ConfigError as error:
            raise where.error(("budgets",), f"namespace {namespace!r}: {error}") from None


def _parse_access(config: SidecarConfig, table: dict[str, Any], where: _Where) -> None:
    config.access = {}
    for who, patterns in table.items():
        keys = ("access", who)
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise where.error(keys, 'must be a list of key patterns such as ["user:*"]')
        if who == "*":
            config.access_default = list(patterns)
        elif who.isdigit():
            config.access[int(who)] = list(patterns)
        else:
            try:
                config.access[pwd.getpwnam(who).pw_uid] = list(patterns)
            except KeyError:
                raise where.error(keys, f"no such user {who!r} (use a uid or a user name)") from None


def _rules(table: Any, keys: tuple[str, ...], where: _Where) -> dict[str, Any]:
    """Validates a pattern -> limits table with the engine itself, so the file accepts
    exactly what `llmthrottle.Limiter(rules=...)` accepts."""
    if not isinstance(table, dict) or not table:
        raise where.error(keys, 'must map key patterns to limits, e.g. [limits."*"] requests = "500/min"')
    from ..limiter import Limiter  # imported here: config must load without the engine for --help

    for pattern, limits in table.items():
        try:
            Limiter(rules={pattern: limits})
        except (ConfigError, ValueError, TypeError) as error:
            place = (*keys, pattern)
            for dimension, value in limits.items() if isinstance(limits, dict) else ():
                try:  # on the error path only: which line of the table is at fault
                    Limiter(rules={pattern: {dimension: value}})
                except (ConfigError, ValueError, TypeError):
                    place = (*place, dimension)
                    break
            raise where.error(place, str(error)) from None
    return dict(table)


def _string(value: Any, keys: tuple[str, ...], where: _Where) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(keys, f"must be a non-empty string, not {value!r}")
    return value


def _positive(value: Any, keys: tuple[str, ...], where: _Where, *, integer: bool = False) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise where.error(keys, f"must be a positive {'integer' if integer else 'number'}, not {value!r}")
    return float(value)


def _choice(value: Any, choices: tuple[str, ...], keys: tuple[str, ...], where: _Where) -> str:
    if value not in choices:
        raise where.error(keys, f"must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return str(value)


_TABLES: Mapping[str, Callable[[SidecarConfig, dict[str, Any], _Where], None]] = {
    "budgets": _parse_budgets,
    "server": _parse_server,
    "state": _parse_state,
    "ledger": _parse_ledger,
    "limits": _parse_limits,
    "namespaces": _parse_namespaces,
    "access": _parse_access,
}
