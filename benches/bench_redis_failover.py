"""What a Redis Cluster failover costs RedisState under load: how long a master's keys are
refused while its replica takes over, and how many admitted decisions a crash loses (Redis
replicates asynchronously: what a master acknowledged but had not yet sent to its replica is
gone with it, and those units are admitted again).

    python benches/bench_redis_failover.py [--crashes 3] [--processes 4] [--seconds 2]

Starts a Cluster of 3 masters with a replica each (cluster-node-timeout 2 s). Each round,
`processes` processes decide as fast as they can on 8 keys of one master (a quota that never
denies: every call is a write), each on its own RedisState; after `seconds` the master is
taken over, and they go on for `seconds` more once its replica answers. Then what they were
told was admitted is compared, key by key, with what the new master counts: `lost` was
acknowledged but is not counted (over-admission the crash allows), `extra` is counted but was
never acknowledged (a reply lost with the connection: under-admission, harmless). The first
round is a graceful failover (CLUSTER FAILOVER), the others SIGKILL the master (which then
rejoins as the replica of its successor). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from redis_servers import RedisCluster, RedisServer

LIMITS = {"requests": {"quota": 10**12, "per": "day"}}  # never denies; counts exactly


def _decide(url: str, prefix: str, keys: list[str], ready: Any, stop: Any, results: Any) -> None:
    import llmthrottle as lt

    state = lt.RedisState(url, prefix=prefix, cluster=True, timeout=0.5, retry_interval=0.05)
    lim = lt.Limiter(LIMITS, state=state)
    admitted: Counter[str] = Counter()
    refused, first_refused, last_refused = 0, 0.0, 0.0
    ready.wait()
    turn = 0
    while not stop.is_set():
        key = keys[turn % len(keys)]
        turn += 1
        try:
            if lim.try_acquire(key):
                admitted[key] += 1
        except lt.RedisUnavailable:
            now = time.monotonic()
            refused += 1
            first_refused = first_refused or now
            last_refused = now
            time.sleep(0.001)  # leave the CPU to the servers while they fail over
    results.put((dict(admitted), refused, first_refused, last_refused))
    state.close()


def _keys_on(url: str, prefix: str, port: int, count: int) -> list[str]:
    import llmthrottle as lt
    from llmthrottle.redis_state.cells import cell_name

    state = lt.RedisState(url, prefix=prefix, cluster=True)
    keys = [key for key in (f"hot{i}" for i in range(400)) if _port_of(state, cell_name(prefix, key, "x")) == port]
    state.close()
    return keys[:count]


def _port_of(state: Any, cell: str) -> int:
    return int(state.client.get_node_from_key(cell).port)


def _counted(url: str, prefix: str, keys: list[str]) -> dict[str, int]:
    import llmthrottle as lt

    state = lt.RedisState(url, prefix=prefix, cluster=True)
    lim = lt.Limiter(LIMITS, state=state)
    counts = {key: int(lim.status(key)[0].used) for key in keys}
    state.close()
    return counts


def one_round(cluster: RedisCluster, processes: int, seconds: float, graceful: bool) -> dict[str, Any]:
    master = cluster.masters()[0]
    replica = cluster.replica_of(master)
    prefix = f"f{uuid.uuid4().hex[:10]}:"
    keys = _keys_on(cluster_url(cluster), prefix, master.port, 8)
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    workers = [
        context.Process(target=_decide, args=(cluster_url(cluster), prefix, keys, ready, stop, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.5)  # every worker connected
    ready.set()
    time.sleep(seconds)
    started = time.monotonic()
    if graceful:
        cluster.failover(replica)
    else:
        master.kill()
    while not cluster.cli(replica, "role").startswith("master"):
        time.sleep(0.02)
    promoted_after = time.monotonic() - started
    time.sleep(seconds)
    stop.set()
    reports = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    admitted: Counter[str] = Counter()
    for report in reports:
        admitted.update(report[0])
    counted = _counted(cluster_url(cluster), prefix, keys)
    refused = sum(report[1] for report in reports)
    firsts = [report[2] for report in reports if report[1]]
    lasts = [report[3] for report in reports if report[1]]
    if not graceful:
        master.start()  # rejoins as the replica of its successor
        cluster.wait_until_ready()
    return {
        "kind": "graceful (CLUSTER FAILOVER)" if graceful else "crash (SIGKILL)",
        "admitted": sum(admitted.values()),
        "lost": sum(max(0, admitted[key] - counted[key]) for key in keys),
        "extra": sum(max(0, counted[key] - admitted[key]) for key in keys),
        "refused": refused,
        "refused_for": (max(lasts) - min(firsts)) if firsts else 0.0,
        "promoted_after": promoted_after,
    }


def cluster_url(cluster: RedisCluster) -> str:
    """A node that is running (the first one may be the one that was killed)."""
    node: RedisServer = next(n for n in cluster.nodes if n.process is not None)
    return node.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crashes", type=int, default=3)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lt-failover-") as directory:
        cluster = RedisCluster(Path(directory), replicas=1)
        try:
            for index in range(1 + options.crashes):
                rows.append(one_round(cluster, options.processes, options.seconds, graceful=index == 0))
                print(rows[-1], file=sys.stderr)
        finally:
            cluster.stop()
    print(f"\n{options.processes} processes deciding on 8 keys of one master; cluster-node-timeout 2 s\n")
    print(
        "| failover | admitted | lost (over-admitted) | extra (counted, not admitted) | refused calls | keys refused for | replica master after |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['kind']} | {row['admitted']:,} | {row['lost']} | {row['extra']} | {row['refused']:,} "
            f"| {row['refused_for']:.2f} s | {row['promoted_after']:.2f} s |"
        )


if __name__ == "__main__":
    main()
