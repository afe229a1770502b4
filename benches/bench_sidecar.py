"""Benchmark of the sidecar over its Unix socket, beside Redis on the same machine.

    python benches/bench_sidecar.py [--quick] [--no-redis]

Measures, and prints as a markdown table:
- one decision's round trip (p50/p99) with the msgpack client, sync (`try_acquire`), and an
  acquire + commit pair;
- pipelined throughput (decisions/s) from 1 and 4 client processes: asyncio clients with many
  calls in flight on one connection (batched frames), and the sync batch call;
- the HTTP/JSON round trip (keep-alive http.client);
- the floor: a bare Unix-socket echo round trip (a uvloop Protocol echoing what it reads, and
  a blocking client), i.e. what the machine itself costs before any request is handled. On a
  VM whose idle vCPUs halt (no guest halt-polling), waking a sleeping process costs tens of
  microseconds, and this row (with everything else) swings with how busy the machine is;
- Redis PING/INCR round trips with the Python redis client over a Unix socket and TCP loopback,
  and redis-benchmark's pipelined INCR, when `redis-server` is installed
  (`apt-get install -y redis-server`; the server is started here and stopped after).

Goals (DESIGN.md): p50 <= 30 us, p99 <= 150 us, >= 100k decisions/s pipelined.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from sidecar_helpers import UnixHTTPConnection, start_server

import llmthrottle as lt
from llmthrottle.client import Sidecar

CONFIG = """
[server]
max_reservations = 5000000
max_reservations_per_uid = 5000000  # the pipelined rows leave their reservations to expire
[limits."*"]
requests = "100M/s"
tokens = "1G/s"
"""
PIPELINE_DEPTH = 512


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    samples = sorted(samples_ns)
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000


def timed(call: Callable[[], Any], count: int, warmup: int = 500) -> tuple[float, float]:
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(count):
        start = clock()
        call()
        samples.append(clock() - start)
    return percentiles(samples)


def sidecar_latency(path: str, count: int) -> dict[str, tuple[float, float]]:
    sidecar = Sidecar(path)
    lim = lt.Limiter(None, state=sidecar)
    clock = time.perf_counter_ns
    samples = []
    for i in range(count + 500):
        start = clock()
        reservation = lim.try_acquire("tenant:acme", tokens=100)
        elapsed = clock() - start
        reservation.commit(tokens=90)  # settled outside the timed part
        if i >= 500:
            samples.append(elapsed)

    def pair() -> None:
        lim.try_acquire("tenant:acme", tokens=100).commit(tokens=90)

    out = {"acquire": percentiles(samples), "pair": timed(pair, count), "ping": timed(sidecar.ping, count)}
    sidecar.close()
    return out


def _async_worker(path: str, seconds: float, commit: bool, result: multiprocessing.Queue[int]) -> None:
    sidecar = Sidecar(path)
    lim = lt.Limiter(None, state=sidecar)

    async def main() -> int:
        done = 0
        stop_at = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                decision = await lim.try_acquire_async("tenant:acme", tokens=10)
                if commit:
                    await decision.commit_async(tokens=5)
                else:
                    decision._settled = True  # left held: measure decisions alone
                done += 1

        await lim.try_acquire_async("warmup")
        await asyncio.gather(*(loop() for _ in range(PIPELINE_DEPTH)))
        sidecar.close()
        await asyncio.sleep(0)
        return done

    import uvloop

    result.put(uvloop.run(main()))


def _batch_worker(path: str, seconds: float, commit: bool, result: multiprocessing.Queue[int]) -> None:
    sidecar = Sidecar(path)
    lim = lt.Limiter(None, state=sidecar)
    calls = [("tenant:acme", {"tokens": 10})] * 256
    done = 0
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        decisions = lim.try_acquire_many(calls)
        for decision in decisions:
            decision._settled = True  # left held
        done += len(decisions)
    sidecar.close()
    result.put(done)


def throughput(path: str, processes: int, seconds: float, worker: Callable[..., None], commit: bool) -> float:
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[int] = context.Queue()
    workers = [context.Process(target=worker, args=(path, seconds, commit, queue)) for _ in range(processes)]
    for process in workers:
        process.start()
    total = sum(queue.get(timeout=seconds + 60) for _ in workers)
    for process in workers:
        process.join()
    # Each process counts within its own `seconds` window; the windows overlap almost fully
    # (the processes are forked together), so the sum over `seconds` is the aggregate rate.
    return total / seconds


def _echo_server(path: str, ready: Any) -> None:
    import uvloop

    async def main() -> None:
        done = asyncio.Event()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                self.transport.write(data)

            def connection_lost(self, exc: Any) -> None:
                done.set()  # one client: serve until it leaves

        server = await asyncio.get_running_loop().create_unix_server(Echo, path)
        ready.set()
        await done.wait()
        server.close()

    uvloop.run(main())


def echo_floor(directory: str, count: int) -> tuple[float, float]:
    """The round trip of a 64-byte message through a uvloop echo server (see the docstring)."""
    import socket

    path = os.path.join(directory, "echo.sock")
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    process = context.Process(target=_echo_server, args=(path, ready))
    process.start()
    ready.wait(30)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    message, buffer = b"x" * 64, bytearray(65536)

    def call() -> None:
        sock.sendall(message)
        sock.recv_into(buffer)

    try:
        return timed(call, count)
    finally:
        sock.close()
        process.join(10)


def http_latency(path: str, count: int) -> tuple[float, float]:
    connection = UnixHTTPConnection(path)
    body = json.dumps({"key": "tenant:acme", "amounts": {"tokens": 100}}).encode()
    headers = {"Content-Type": "application/json"}

    def call() -> None:
        connection.request("POST", "/v1/acquire", body=body, headers=headers)
        connection.getresponse().read()

    try:
        return timed(call, count)
    finally:
        connection.close()


def redis_reference(count: int) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        return {}
    import redis

    directory = tempfile.mkdtemp(prefix="lt-redis-")
    sock = os.path.join(directory, "redis.sock")
    port = 6391
    subprocess.run(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            sock,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--pidfile",
            os.path.join(directory, "redis.pid"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        out: dict[str, Any] = {}
        for name, client in (("unix", redis.Redis(unix_socket_path=sock)), ("tcp", redis.Redis(port=port))):
            out[f"ping {name}"] = timed(client.ping, count)
            out[f"incr {name}"] = timed(lambda: client.incr("counter"), count)
            client.close()
        if shutil.which("redis-benchmark"):
            for pipeline in (1, 16):
                text = subprocess.run(
                    ["redis-benchmark", "-s", sock, "-t", "incr", "-n", "200000", "-P", str(pipeline), "-q"],
                    capture_output=True,
                    text=True,
                ).stdout
                # The last "\r"-separated segment is the summary: "INCR: 869565.19 requests per second, ..."
                match = re.search(r"INCR: ([0-9.]+) requests per second", text.rsplit("\r", 1)[-1])
                out[f"redis-benchmark incr P={pipeline} (unix)"] = float(match.group(1)) if match else None
        return out
    finally:
        subprocess.run(
            ["redis-cli", "-s", sock, "shutdown", "nosave"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter runs")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    count = 3000 if args.quick else 20000
    seconds = 1.0 if args.quick else 3.0
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="lt-bench-") as directory:
        rows.append(
            ("floor: Unix-socket echo round trip (uvloop server)", "%.1f / %.1f" % echo_floor(directory, count), "")
        )
        server = start_server(directory, CONFIG, ("--log-level", "warning"))
        try:
            latency = sidecar_latency(server.socket, count)
            rows.append(("sidecar try_acquire, msgpack, sync (round trip)", "%.1f / %.1f" % latency["acquire"], ""))
            rows.append(("sidecar try_acquire + commit, msgpack, sync", "%.1f / %.1f" % latency["pair"], ""))
            rows.append(("sidecar ping, msgpack, sync", "%.1f / %.1f" % latency["ping"], ""))
            rows.append(
                (
                    "sidecar /v1/acquire, HTTP/JSON keep-alive",
                    "%.1f / %.1f" % http_latency(server.socket, count // 4),
                    "",
                )
            )
            for processes in (1, 4):
                rate = throughput(server.socket, processes, seconds, _async_worker, False)
                rows.append(
                    (
                        f"sidecar try_acquire_async pipelined ({PIPELINE_DEPTH} in flight), {processes} proc",
                        "",
                        f"{rate:,.0f}",
                    )
                )
                rate = throughput(server.socket, processes, seconds, _async_worker, True)
                rows.append((f"sidecar acquire+commit_async pipelined, {processes} proc (pairs/s)", "", f"{rate:,.0f}"))
                rate = throughput(server.socket, processes, seconds, _batch_worker, False)
                rows.append((f"sidecar try_acquire_many (256 per frame), {processes} proc", "", f"{rate:,.0f}"))
        finally:
            server.stop()
    if not args.no_redis:
        for name, value in redis_reference(count).items():
            if isinstance(value, tuple):
                rows.append((f"redis {name} (redis-py)", "%.1f / %.1f" % value, ""))
            elif value is not None:
                rows.append((name, "", f"{value:,.0f}"))
    print(f"\nsidecar benchmark, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print("| what | p50 / p99 µs | per second |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    main()
