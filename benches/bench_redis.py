"""Decisions on Redis, side by side in one run on the same server: llmthrottle's RedisState
(without and with leases) beside the Redis-backed limiters of limits, throttled-py and
pyrate-limiter, with redis-py's PING and INCR as the floor.

    python benches/bench_redis.py [--quick] [--url redis://host:6379/0] [--baseline REF ...]

Without --url a redis-server is started on a free loopback port (and stopped after). Prints a
markdown table: per-decision p50/p99 from one process (every contender measured in interleaved
rounds, so the machine's noise falls on all alike), the server's own time per decision (the
microseconds `INFO commandstats` counts for the commands one decision sends, after CONFIG
RESETSTAT: with --url this resets that server's statistics; see `server_time`), throughput from 1 and 4 processes
(every process hammering one hot key), and each limiter's exactness: 4 processes on a limit of
500/s with a burst of 50 for a few seconds, admitted against the most the limit allows
(burst + rate * T); an over-admitted count above 0 is a limiter that let more through than its
limit. Goals (DESIGN.md): one round trip per decision (p50 <= 1.2x PING) and ahead of every
peer; with leases >= 1M decisions/s per host; 0 over-admitted everywhere.

`--baseline REF` adds "llmthrottle RedisState @REF": the `redis_state` package as of that git
commit, run beside this checkout's in the same rounds (the rest of llmthrottle is this
checkout's), so a change to it is measured side by side with what it replaces.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from redis_servers import RedisServer

HOT_LIMIT = 10**8  # per second: never denies, so every call is a full decision
EXACT_RATE, EXACT_BURST = 500, 50


# ---------------------------------------------------------------------------- the contenders
# Each factory takes (url, prefix, rate_per_s, burst) and returns a zero-argument callable that
# makes one decision and returns whether it was admitted.


def redis_ping(url: str, prefix: str, rate: int, burst: int) -> Callable[[], bool]:
    import redis

    client = redis.Redis.from_url(url)
    return lambda: bool(client.ping())


def redis_incr(url: str, prefix: str, rate: int, burst: int) -> Callable[[], bool]:
    import redis

    client = redis.Redis.from_url(url)
    key = f"{prefix}incr"
    return lambda: client.incr(key) > 0


def _llmthrottle(url: str, prefix: str, rate: int, burst: int, leases: bool, ref: str = "") -> Callable[[], bool]:
    import llmthrottle as lt

    make_state = baseline(ref).RedisState if ref else lt.RedisState
    state = make_state(url, prefix=prefix, leases=leases)
    limiter = lt.Limiter({"requests": {"rate": f"{rate}/s", "burst": burst}}, state=state)
    return lambda: bool(limiter.try_acquire("hot"))


def llmthrottle_redis(url: str, prefix: str, rate: int, burst: int) -> Callable[[], bool]:
    return _llmthrottle(url, prefix, rate, burst, leases=False)


def llmthrottle_leases(url: str, prefix: str, rate: int, burst: int) -> Callable[[], bool]:
    return _llmthrottle(url, prefix, rate, burst, leases=True)


def limits_fixed_window(url: str, prefix: str, rate: int, burst: int) -> Callable[[], bool]:
    from limits import RateLimitItemPerSecond, storage, strategies

    limiter = strategies.FixedWindowRateLimiter(storage.RedisStorage(url, key_prefix=prefix.rstrip(":")))
    item = RateLimitItemPerSecond(rate)
    return lambda: bool(limiter.hit(item, "hot"))


def limits_moving_window(url: str, prefix: str, rate: int, burst: int) -> Callable[[], bool]:
    from limits import RateLimitItemPerSecond, storage, strategies

    limiter = strategies.MovingWindowRateLimiter(storage.RedisStorage(url, key_prefix=prefix.rstrip(":")))
    item = RateLimitItemPerSecond(rate)
    return lambda: bool(limiter.hit(item, "hot"))


def throttled_gcra(url: str, prefix: str, rate: int, burst: int) -> Callable[[], bool]:
    from throttled import RateLimiterType, Throttled, rate_limiter, store

    throttle = Throttled(
        using=RateLimiterType.GCRA.value,
        quota=rate_limiter.per_sec(rate, burst=burst),
        store=store.RedisStore(server=url),
        key_prefix=prefix.rstrip(":"),
    )
    return lambda: not throttle.limit("hot").limited


def throttled_token_bucket(url: str, prefix: str, rate: int, burst: int) -> Callable[[], bool]:
    from throttled import RateLimiterType, Throttled, rate_limiter, store

    throttle = Throttled(
        using=RateLimiterType.TOKEN_BUCKET.value,
        quota=rate_limiter.per_sec(rate, burst=burst),
        store=store.RedisStore(server=url),
        key_prefix=prefix.rstrip(":"),
    )
    return lambda: not throttle.limit("hot").limited


def pyrate_redis(url: str, prefix: str, rate: int, burst: int) -> Callable[[], bool]:
    import redis
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

    # pyrate's sliding log keeps one entry per admitted call: a 10^8/s limit would grow without
    # bound, so its hot-key runs use the largest log it can hold per second.
    bucket = RedisBucket.init([Rate(min(rate, 10**6), Duration.SECOND)], redis.Redis.from_url(url), f"{prefix}hot")
    limiter = Limiter(bucket)
    return lambda: bool(limiter.try_acquire("hot", blocking=False))


def baseline(ref: str) -> Any:
    """`llmthrottle.redis_state` as of git `ref`, loaded beside this checkout's as
    `llmthrottle._redis_state_<ref>` (its relative imports reach this checkout's llmthrottle)."""
    import llmthrottle

    name = "llmthrottle._redis_state_" + re.sub(r"\W", "_", ref)
    if name in sys.modules:
        return sys.modules[name]
    root = Path(__file__).resolve().parent.parent
    folder = "python/llmthrottle/redis_state"
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-tree", "--name-only", f"{ref}:{folder}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    target = Path(tempfile.mkdtemp(prefix="lt-bench-baseline-")) / "redis_state"
    target.mkdir()
    for file in listed:
        text = subprocess.run(
            ["git", "-C", str(root), "show", f"{ref}:{folder}/{file}"], check=True, capture_output=True
        )
        (target / file).write_bytes(text.stdout)
    spec = importlib.util.spec_from_file_location(
        name, target / "__init__.py", submodule_search_locations=[str(target)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    assert llmthrottle  # the parent package, imported first
    return module


def contender(name: str) -> Callable[..., Callable[[], bool]]:
    """The factory of a contender, by its name (a baseline's name carries its git ref)."""
    if " @" in name:
        ref = name.split(" @", 1)[1]
        return lambda url, prefix, rate, burst: _llmthrottle(url, prefix, rate, burst, leases=False, ref=ref)
    return CONTENDERS[name]


CONTENDERS: dict[str, Callable[..., Callable[[], bool]]] = {
    "redis-py PING (floor)": redis_ping,
    "redis-py INCR (floor)": redis_incr,
    "llmthrottle RedisState": llmthrottle_redis,
    "llmthrottle RedisState, leases": llmthrottle_leases,
    "limits FixedWindow": limits_fixed_window,
    "limits MovingWindow": limits_moving_window,
    "throttled-py GCRA": throttled_gcra,
    "throttled-py TokenBucket": throttled_token_bucket,
    "pyrate-limiter RedisBucket": pyrate_redis,
}
LIMITERS = [name for name in CONTENDERS if "floor" not in name]


# ---------------------------------------------------------------------------- measurements


def latencies(names: list[str], url: str, count: int, rounds: int = 20) -> dict[str, tuple[float, float]]:
    """p50/p99 of one decision for each contender, measured in interleaved rounds (a slice of
    each in turn), so that the machine's slow and fast moments fall on all of them alike."""
    deciders = {name: contender(name)(url, f"b{uuid.uuid4().hex[:8]}:", HOT_LIMIT, HOT_LIMIT) for name in names}
    for decide in deciders.values():
        for _ in range(min(count, 1000)):
            decide()
    samples: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    per_round = max(1, count // rounds)
    for _ in range(rounds):
        for name, decide in deciders.items():
            out = samples[name]
            for _ in range(per_round):
                start = clock()
                decide()
                out.append(clock() - start)
    result = {}
    for name, values in samples.items():
        values.sort()
        result[name] = (values[len(values) // 2] / 1000, values[int(len(values) * 0.99)] / 1000)
    return result


def server_time(names: list[str], url: str, count: int) -> dict[str, float]:
    """The server's own µs per decision of each contender, over `count` decisions after
    CONFIG RESETSTAT, as INFO commandstats counts them: the script commands' (EVAL, EVALSHA,
    FCALL, whose time holds the commands the script calls) for a contender that sends any,
    every command's otherwise."""
    import redis

    admin = redis.Redis.from_url(url)
    scripts = ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_fcall", "cmdstat_eval_ro", "cmdstat_evalsha_ro")
    out = {}
    for name in names:
        decide = contender(name)(url, f"b{uuid.uuid4().hex[:8]}:", HOT_LIMIT, HOT_LIMIT)
        for _ in range(100):
            decide()
        admin.config_resetstat()
        for _ in range(count):
            decide()
        stats = {command: entry for command, entry in admin.info("commandstats").items() if command != "cmdstat_config"}
        counted = [stats[command] for command in scripts if command in stats] or list(stats.values())
        out[name] = sum(float(entry["usec"]) for entry in counted) / count
    return out


def _worker(name: str, url: str, prefix: str, rate: int, burst: int, seconds: float, start: Any, out: Any) -> None:
    decide = contender(name)(url, prefix, rate, burst)
    decide()  # connected, scripts loaded
    start.wait()
    calls = admitted = 0
    began = time.perf_counter()
    deadline = began + seconds
    while True:
        for _ in range(64):
            calls += 1
            admitted += decide()
        if time.perf_counter() >= deadline:
            break
    out.put((calls, admitted, began, time.perf_counter()))


def run_processes(name: str, url: str, processes: int, seconds: float, rate: int, burst: int) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    prefix = f"b{uuid.uuid4().hex[:8]}:"
    workers = [
        context.Process(target=_worker, args=(name, url, prefix, rate, burst, seconds, start, out))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.5)
    start.set()
    reports = [out.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    return reports


def throughput(name: str, url: str, processes: int, seconds: float) -> float:
    reports = run_processes(name, url, processes, seconds, HOT_LIMIT, HOT_LIMIT)
    elapsed = max(r[3] for r in reports) - min(r[2] for r in reports)
    return sum(r[0] for r in reports) / elapsed


def exactness(name: str, url: str, seconds: float) -> tuple[int, int, int]:
    """(admitted, most allowed, over-admitted) for 4 processes on 500/s, burst 50."""
    reports = run_processes(name, url, 4, seconds, EXACT_RATE, EXACT_BURST)
    admitted = sum(r[1] for r in reports)
    window = max(r[3] for r in reports) - min(r[2] for r in reports)
    allowed = int(EXACT_BURST + EXACT_RATE * window)
    return admitted, allowed, max(0, admitted - allowed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter runs (a CI smoke run)")
    parser.add_argument("--url", help="an existing Redis (default: start one here)")
    parser.add_argument("--only", nargs="*", help="contender names to run (substring match)")
    parser.add_argument(
        "--baseline", action="append", default=[], metavar="REF", help="also run redis_state as of this git ref"
    )
    parser.add_argument("--no-throughput", action="store_true", help="latency and server time only")
    args = parser.parse_args()
    count, seconds = (2000, 1.0) if args.quick else (20000, 3.0)
    names = [n for n in CONTENDERS if not args.only or any(o.lower() in n.lower() for o in args.only)]
    at = names.index("llmthrottle RedisState") + 1 if "llmthrottle RedisState" in names else len(names)
    names[at:at] = [f"llmthrottle RedisState @{ref}" for ref in args.baseline]
    server = None
    with tempfile.TemporaryDirectory(prefix="lt-bench-redis-") as directory:
        if args.url:
            url = args.url
        else:
            server = RedisServer(Path(directory))
            url = server.url
        try:
            rows = []
            measured = latencies(names, url, count)
            on_server = server_time(names, url, count // 4)
            ping_p50 = measured.get("redis-py PING (floor)", (None, None))[0]
            for name in names:
                p50, p99 = measured[name]
                if args.no_throughput:
                    rows.append((name, p50, p99, on_server[name], None, None, None))
                    continue
                one = throughput(name, url, 1, seconds)
                four = throughput(name, url, 4, seconds)
                exact = exactness(name, url, seconds) if name in LIMITERS or " @" in name else None
                rows.append((name, p50, p99, on_server[name], one, four, exact))
                print(f"  measured {name}", file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.stop()
    print(f"\nredis-server on loopback TCP, {os.cpu_count()} cores; hot key, 1 dimension\n")
    print(
        "| contender | p50 µs | p99 µs | p50 / PING | server µs | decisions/s, 1 proc | 4 procs"
        " | admitted / allowed | over-admitted |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, p50, p99, server_us, one, four, exact in rows:
        ratio = f"{p50 / ping_p50:.2f}x" if ping_p50 else "-"
        exact_text = ("-", "-") if exact is None else (f"{exact[0]} / {exact[1]}", str(exact[2]))
        rates = ("-", "-") if one is None else (f"{one:,.0f}", f"{four:,.0f}")
        print(
            f"| {name} | {p50:.1f} | {p99:.1f} | {ratio} | {server_us:.2f} | {rates[0]} | {rates[1]}"
            f" | {exact_text[0]} | {exact_text[1]} |"
        )


if __name__ == "__main__":
    main()
