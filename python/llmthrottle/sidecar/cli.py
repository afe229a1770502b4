"""Run the llmthrottle sidecar: one process per host that owns the rate limits, budgets and usage
ledger, and answers every local process over a Unix socket (HTTP/JSON for any language and curl,
a faster binary protocol for the Python client: `lt.Limiter(None, state=lt.Sidecar())`).

Policy: --config PATH, else $LLMTHROTTLE_CONFIG, else ./llmthrottle.toml, else
/etc/llmthrottle/llmthrottle.toml, else a built-in default (namespace "default": 600 requests/min,
2M tokens/min, 64 in flight per key). See docs/sidecar.md for the file's format.

State: by default the counters live in shared memory (one table per socket path), so they survive
a restart of the server and are shared with in-process limiters on the same table; every
committed call is recorded in the ledger at $XDG_STATE_HOME/llmthrottle/ledger (or --ledger).

Signals: SIGTERM/SIGINT stop gracefully (flushing the ledger); SIGHUP reloads the policy file,
keeping every counter. Try it:

  llmthrottle serve --socket /tmp/lt.sock &
  curl --unix-socket /tmp/lt.sock http://x/health
  curl --unix-socket /tmp/lt.sock -d '{"key": "tenant:acme", "amounts": {"tokens": 1200}}' http://x/v1/acquire
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The `llmthrottle serve` options; each overrides the policy file's [server] setting."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", metavar="PATH", help="policy file (llmthrottle.toml); see above for the default")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="Unix socket to listen on (default: $LLMTHROTTLE_SOCKET, $XDG_RUNTIME_DIR/llmthrottle.sock "
        "or /tmp/llmthrottle-UID.sock)",
    )
    parser.add_argument("--socket-mode", metavar="OCTAL", help='permissions of the socket file (default "0660")')
    parser.add_argument("--socket-group", metavar="GROUP", help="group owning the socket file (default: yours)")
    parser.add_argument("--ledger", metavar="DIR", help="record every committed call in this ledger directory")
    parser.add_argument("--log-format", choices=("text", "json"), help="json: one JSON object per line")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--check", action="store_true", help="validate the policy file and exit")
    parser.add_argument(
        "--print-socket",
        action="store_true",
        help="print the socket path the server would listen on and exit (for scripts: "
        'curl --unix-socket "$(llmthrottle serve --print-socket)" ...)',
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")


def run(args: argparse.Namespace) -> int:
    """Entry point of `llmthrottle serve`."""
    from .._native import ConfigError
    from .config import find_config_file, load_config

    path = args.config or find_config_file()
    try:
        config = load_config(path)
        if args.socket_mode is not None:
            config.socket_mode = int(args.socket_mode, 8)
    except (ConfigError, ValueError) as error:
        print(f"llmthrottle serve: {error}", file=sys.stderr)
        return 2
    if args.socket:
        config.socket = args.socket
    if args.socket_group:
        config.socket_group = args.socket_group
    if args.ledger:
        config.ledger_path = args.ledger
    if args.log_format:
        config.log_format = args.log_format
    if args.log_level:
        config.log_level = args.log_level
    if args.check:
        print(f"{path or 'built-in default policy'}: OK; namespaces {', '.join(sorted(config.namespaces))}")
        return 0
    if args.print_socket:
        print(config.socket)
        return 0
    from .server import ServerAlreadyRunning, SidecarServer

    _configure_logging(config.log_format, config.log_level)
    server = SidecarServer(config, path, tune_gc=True)
    try:
        if args.no_uvloop:
            asyncio.run(server.run())
        else:
            import uvloop

            uvloop.run(server.run())
    except (ServerAlreadyRunning, ConfigError, PermissionError) as error:
        logging.getLogger("llmthrottle.sidecar").error("cannot start: %s", error)
        return 1
    return 0


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and exception text if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
