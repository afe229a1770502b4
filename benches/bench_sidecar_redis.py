"""The sidecar on Redis: decisions/s from 4 client processes, and how fast the sidecar still
answers a ping meanwhile (its event loop's responsiveness under Redis round trips).

    python benches/bench_sidecar_redis.py [--per-process 4000]

A redis-server and a sidecar with `[state] kind = "redis"` are started for the run. Each client
process keeps 200 `try_acquire_async` calls in flight on one connection; a probe on another
connection pings every 5 ms. Compare with the loop-bound behaviour by running it on an earlier
revision, or read the figures in the issue notes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from redis_servers import RedisServer
from sidecar_helpers import RawClient, start_server

import llmthrottle as lt
from llmthrottle.sidecar.protocol import Op

IN_FLIGHT = 200


def _client(socket_path: str, count: int, results: mp.Queue) -> None:  # type: ignore[type-arg]
    async def main() -> float:
        sidecar = lt.Sidecar(socket_path)
        limiter = lt.Limiter(None, state=sidecar)
        await limiter.try_acquire_async("warm-up")
        started = time.perf_counter()
        for _ in range(count // IN_FLIGHT):
            await asyncio.gather(*[limiter.try_acquire_async(f"k{i}") for i in range(IN_FLIGHT)])
        elapsed = time.perf_counter() - started
        sidecar.close()
        return elapsed

    results.put(asyncio.run(main()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-process", type=int, default=4000, help="decisions per client process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lt-bench-") as directory:
        redis = RedisServer(Path(directory) / "redis")
        policy = f'[state]\nkind = "redis"\nurl = "{redis.url}"\nprefix = "bench:"\n[limits."*"]\nrequests = "1G/s"\n'
        server = start_server(directory, policy)
        try:
            results: mp.Queue = mp.Queue()  # type: ignore[type-arg]
            clients = [mp.Process(target=_client, args=(server.socket, args.per_process, results)) for _ in range(4)]
            for client in clients:
                client.start()
            probe, pings = RawClient(server.socket), []
            time.sleep(0.3)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                started = time.perf_counter()
                probe.call([1, Op.PING])
                pings.append(time.perf_counter() - started)
                time.sleep(0.005)
            elapsed = max(results.get() for _ in clients)
            for client in clients:
                client.join()
            probe.close()
        finally:
            server.stop()
            redis.stop()
    pings.sort()
    print("| decisions/s, 4 procs | ping under load p50 µs | ping p99 µs |")
    print("|---|---|---|")
    print(
        f"| {4 * args.per_process / elapsed:,.0f} | {pings[len(pings) // 2] * 1e6:.0f} "
        f"| {pings[int(len(pings) * 0.99)] * 1e6:.0f} |"
    )


if __name__ == "__main__":
    main()
