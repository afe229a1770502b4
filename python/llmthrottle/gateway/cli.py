"""`llmthrottle gateway`: an OpenAI- and Anthropic-compatible proxy in front of the deployments
of a policy file, with virtual keys, tier limits, budgets, failover and a ledger.

    llmthrottle gateway --config llmthrottle.toml            # serves on [gateway] listen
    llmthrottle gateway keys create --config llmthrottle.toml --tenant acme --tier pro
    llmthrottle gateway keys list --config llmthrottle.toml
    llmthrottle gateway keys rotate KEY_ID --config llmthrottle.toml
    llmthrottle gateway keys revoke KEY_ID --config llmthrottle.toml

A key's plaintext is printed once, when it is made or rotated; only its hash is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import GatewayConfig
    from .server import Gateway

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the policy file ([gateway], [tiers.*], [models.*], [[budgets]], ...)")
    parser.add_argument("--listen", help="host:port (default: [gateway] listen, else 127.0.0.1:8080)")
    parser.add_argument(
        "--workers",
        type=int,
        help="processes serving the port together (default: [gateway] workers, "
        "else 1); they share the [state] table, so limits stay exact across them",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    sub = parser.add_subparsers(dest="gateway_command", metavar="keys")
    keys = sub.add_parser("keys", help="create, list, rotate or revoke virtual API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = keys_sub.add_parser("create", help="make a key (its plaintext is printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--tier", default="default")
    create.add_argument("--team")
    create.add_argument("--user")
    create.add_argument("--models", help="comma-separated model aliases this key may use (default: all)")
    create.add_argument("--expires-in", type=float, help="seconds until the key stops working")
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    for action in ("rotate", "revoke"):
        one = keys_sub.add_parser(action, help=f"{action} a key by its id")
        one.add_argument("key_id")
    for action in ("create", "rotate"):
        keys_sub.choices[action].add_argument(
            "--json", action="store_true", help='print {"key": ..., "id": ..., ...} on one line, for scripts'
        )
    for sub_parser in keys_sub.choices.values():
        sub_parser.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .._native import ConfigError
    from .config import load_gateway_config, parse_listen

    try:
        config = load_gateway_config(args.config)
    except ConfigError as error:
        print(f"llmthrottle gateway: {error}", file=sys.stderr)
        return 2
    if getattr(args, "gateway_command", None) == "keys":
        return _keys(args, config)
    if args.listen:
        address = parse_listen(args.listen)
        if address is None:
            print(f"llmthrottle gateway: --listen must be host:port, not {args.listen!r}", file=sys.stderr)
            return 2
        (config.host, config.port), config.listen_tcp = address, True
    if args.workers is not None:
        if args.workers < 1:
            print(f"llmthrottle gateway: --workers must be at least 1, not {args.workers}", file=sys.stderr)
            return 2
        config.workers = args.workers
    if config.workers > 1 and config.shared.state_kind == "in-process":
        print(
            'llmthrottle gateway: several workers need one state: [state] kind = "shared" or "redis"', file=sys.stderr
        )
        return 2
    where = (f"http://{config.host}:{config.port}" if config.listen_tcp else "") + (
        f" unix:{config.socket}" if config.socket else ""
    )
    print(
        f"llmthrottle gateway on {where.strip()} ({len(config.models)} model aliases, "
        f"tiers {', '.join(sorted(config.tiers))}, {config.workers} worker(s))",
        file=sys.stderr,
        flush=True,
    )
    if config.workers == 1:
        return serve(config, args.no_uvloop, reuse_port=False)
    return supervise(serve, [(config, args.no_uvloop, True, i == 0) for i in range(config.workers)], "gateway-worker")


def supervise(target: Callable[..., Any], arguments: Sequence[tuple[Any, ...]], name: str) -> int:
    """Runs `target(*entry)` in one spawned process per entry of `arguments` (the workers sharing
    a port) until they all end. SIGTERM stops them; SIGHUP is passed on to each (a gateway worker
    reloads its policy); Ctrl-C stops them and waits."""
    import multiprocessing
    import os
    import signal

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=target, args=entry, name=f"{name}-{i}") for i, entry in enumerate(arguments)]
    for worker in workers:
        worker.start()

    def stop(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()

    def reload(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, reload)
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        stop(signal.SIGINT, None)
        for worker in workers:
            worker.join()
    return 0


async def _unix_site(runner: Any, path: str) -> None:
    """The Unix socket site, mode 0660 (a stale socket of a previous run is replaced)."""
    import os

    from aiohttp import web

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    site = web.UnixSite(runner, path, backlog=2048)
    await site.start()
    os.chmod(path, 0o660)


def _reload(gateway: Gateway) -> None:
    """SIGHUP: reads the policy file again; a broken file is reported and the old policy kept."""
    from .._native import ConfigError
    from .config import load_gateway_config

    try:
        gateway.reload(load_gateway_config(gateway.config.path))
    except (ConfigError, OSError) as error:
        print(f"llmthrottle gateway: reload failed, keeping the running policy: {error}", file=sys.stderr, flush=True)
        return
    print("llmthrottle gateway: policy reloaded", file=sys.stderr, flush=True)


def _freeze_what_lasts() -> None:
    """Moves every object made so far (modules, the policy, tokenizers, the app: about 45,000
    of them) out of the cyclic collector's sight for the life of the process. Serving never
    frees them; but a full collection, which the objects of requests in flight trigger every
    few thousand requests, would walk them all, 10-30 ms with the event loop stopped (far more
    on busy cores), each time: the slowest requests' wait. What comes after is still collected."""
    import gc

    gc.collect()
    gc.freeze()


def serve(config: GatewayConfig, no_uvloop: bool, reuse_port: bool, first: bool = True) -> int:
    """Runs one gateway process until SIGTERM or Ctrl-C (the workers bind one port together)."""
    import asyncio
    import signal

    from aiohttp import web

    from .._native import ConfigError
    from .server import Gateway

    try:
        gateway = Gateway(config)
    except ConfigError as error:
        print(f"llmthrottle gateway: {error}", file=sys.stderr)
        return 2

    async def run_site() -> None:
        runner = web.AppRunner(gateway.app(), access_log=None)
        await runner.setup()
        gateway.warm()
        _freeze_what_lasts()
        if config.listen_tcp:
            await web.TCPSite(runner, config.host, config.port, backlog=2048, reuse_port=reuse_port).start()
        if config.socket is not None and first:
            await _unix_site(runner, config.socket)  # one worker serves the Unix socket
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stopped.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(gateway))
        try:
            await stopped.wait()
        finally:
            await runner.cleanup()

    try:
        if no_uvloop:
            asyncio.run(run_site())
        else:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(run_site())
    except KeyboardInterrupt:
        pass
    return 0


def _keys(args: argparse.Namespace, config: GatewayConfig) -> int:
    from .keys import KeyStore

    store = KeyStore(config.keys_db)
    try:
        if args.keys_command == "create":
            models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
            expires = time.time() + args.expires_in if args.expires_in else None
            secret, key = store.create(
                tenant=args.tenant, tier=args.tier, team=args.team, user=args.user, models=models, expires_at=expires
            )
            if args.json:
                print(json.dumps({"key": secret, **key.describe()}))
            else:
                print(secret)
                print(
                    f"id {key.id} tenant {key.tenant} tier {key.tier}: keep the key above, it is not shown again",
                    file=sys.stderr,
                )
        elif args.keys_command == "list":
            for key in store.list():
                print(json.dumps(key.describe()))
        elif args.keys_command == "rotate":
            try:
                secret = store.rotate(args.key_id)
                print(json.dumps({"key": secret, "id": args.key_id}) if args.json else secret)
            except KeyError:
                print(f"llmthrottle gateway keys: no live key {args.key_id!r}", file=sys.stderr)
                return 1
        elif args.keys_command == "revoke":
            if not store.revoke(args.key_id):
                print(f"llmthrottle gateway keys: no live key {args.key_id!r}", file=sys.stderr)
                return 1
    except Exception as error:  # a bad field: one clear line, not a traceback
        from .._native import ConfigError

        if not isinstance(error, (ConfigError, ValueError)):
            raise
        print(f"llmthrottle gateway keys: {error}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0
