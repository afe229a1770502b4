"""A bare pass-through proxy on the gateway's stack, with none of llmthrottle in it.

    python benches/bare_proxy.py --port 8081 --upstream http://127.0.0.1:8080 [--workers 2]

aiohttp on uvloop, started as `llmthrottle gateway` starts: one process per worker, spawned,
all binding one port with SO_REUSEPORT (one worker binds it alone); each worker keeps one
aiohttp.ClientSession with the connector and options of the gateway's upstream client
(gateway/upstream.py). A POST to any path is read whole, POSTed to the same path at
`--upstream` (with the caller's authorization and content-type), and the upstream's status,
body and content-type are answered; an unreachable upstream is a 502. No keys, limits, ledger,
routing or usage reading: bench_gateway.py runs it beside the gateway so that the gateway's
added latency splits into the stack's share (this proxy's) and llmthrottle's own.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import aiohttp
from aiohttp import web

from llmthrottle.gateway.cli import supervise

# The gateway's: its request body cap (server.py), its upstream timeout (config.py's default).
_MAX_BODY = 32 << 20
_TIMEOUT_S = 600.0


def app(upstream: str) -> web.Application:
    """The proxy's routes: POST anything to pass it on, GET /health."""
    base = upstream.rstrip("/")
    client: list[aiohttp.ClientSession] = []

    async def open_client(application: web.Application) -> None:
        # As gateway/upstream.py: connections kept, no cap, no decompressing, no cookies.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0)
        client.append(
            aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        )

    async def close_client(application: web.Application) -> None:
        await client[0].close()

    async def forward(request: web.Request) -> web.Response:
        content = await request.read()
        headers = {
            "content-type": request.headers.get("content-type", "application/json"),
            "accept-encoding": "identity",
        }
        if "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        try:
            async with client[0].post(base + request.path_qs, data=content, headers=headers) as answer:
                body = await answer.read()
                return web.Response(
                    status=answer.status,
                    body=body,
                    headers={"content-type": answer.headers.get("content-type", "application/octet-stream")},
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            return web.Response(status=502, text=f"upstream unreachable: {type(error).__name__}")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    application = web.Application(client_max_size=_MAX_BODY)
    application.on_startup.append(open_client)
    application.on_cleanup.append(close_client)
    application.router.add_get("/health", health)
    application.router.add_post("/{path:.*}", forward)
    return application


def serve(host: str, port: int, upstream: str, reuse_port: bool) -> None:
    """Runs one proxy process until SIGTERM or Ctrl-C."""
    import uvloop

    async def run_site() -> None:
        runner = web.AppRunner(app(upstream), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=2048, reuse_port=reuse_port).start()
        stopped = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        try:
            await stopped.wait()
        finally:
            await runner.cleanup()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_site())
    except KeyboardInterrupt:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's origin, e.g. http://127.0.0.1:8080")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (default: %(default)s)")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers == 1:
        serve(args.host, args.port, args.upstream, reuse_port=False)
        return 0
    # Started and stopped as the gateway's workers are.
    return supervise(serve, [(args.host, args.port, args.upstream, True)] * args.workers, "bare-proxy")


if __name__ == "__main__":
    sys.exit(main())
