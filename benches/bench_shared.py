"""Shared-memory state: cost per decision, throughput across processes, exactness across processes.

    python benches/bench_shared.py [--duration 1.5] [--repeats 7] [--target-ms 20]
                                   [--token-throttle-python /path/to/python3.12] [--only a,b] [--json]

Prints three markdown tables (progress goes to stderr):

1. **ns per allowed `try_acquire`** from Python, `SharedState` vs `InProcessState`, 1 and 2
   dimensions, 1 key and 100k keys. Same method as benches/bench_limiter.py: a pre-bound
   `f = lim.try_acquire`, `for k in keys: f(k)` timed with perf_counter_ns around the whole
   loop, gc disabled, every candidate once per round (interleaved), best of `--repeats`
   rounds; a sample of decisions is asserted allowed. Rates are 1G/s: every call is allowed.
   Goal (DESIGN.md): shared within 1.3x of in-process, <= 150 ns.
2. **Aggregate throughput** (allowed decisions/s summed over processes) with 1 and 2
   processes on one key, and 2 processes on a key each. Every process is forked fresh, builds its own limiter
   (peers' cross-process objects that must be made by a parent, pyrate's MultiprocessBucket,
   are made before the fork), waits at a barrier, then decides for `--duration` seconds and
   reports its count; decisions/s = sum(allowed / own elapsed). Limits never bind (every
   decision should be allowed; any that is not is reported under the table).
   Candidates, each library's cross-process option plus an in-memory reference:
   - llmthrottle `SharedState` (shared memory) and `InProcessState` (per process, reference);
   - pyrate-limiter 4: `MultiprocessBucket` (a Manager ListProxy + multiprocessing RLock; the
     library's in-memory multi-process bucket), `SQLiteBucket.init_from_file(...,
     use_file_lock=True)` (its documented "one host, many processes" backend; filelock), and
     `InMemoryBucket` (per process, reference). Sliding-window log: `Rate(10**7, 10 ms)`
     (1G/s, with the shortest window so that the log stays short: the cheapest setting for
     it). The SQLite bucket timestamps with the host clock (`time_ns`), so a `SQLiteClock` is
     not needed on one host. Distinct keys = a bucket (table) of its own per key.
     `try_acquire(key, 1, blocking=True)`: with `blocking=False` a call fails at once when
     another process holds the bucket's lock (spurious denials), and the SQLite bucket's
     file lock raises TypeError (pyrate 4.5.1 calls `FileLock.acquire(False)`, which
     filelock 4.x rejects); a limit that never binds never sleeps, and for the binding
     limit of table 3 `timeout=0.05` returns False.
   - token-throttle 14 (Python >= 3.12, run in a subprocess of `--token-throttle-python`):
     `SyncRateLimiter` with `SyncSqliteBackendBuilder` (its cross-process backend on one
     host) and `SyncMemoryBackendBuilder` (reference). No non-blocking try: one decision is
     `acquire_capacity(usage, key)` + `refund_capacity` (refunds nothing), as in
     bench_limiter.py (`timeout=None`: with `timeout=0` a second process gets TimeoutError
     whenever the other holds SQLite's write lock; table 3 uses `timeout=0`).
   SQLite files live in a temporary directory under /dev/shm (tmpfs, like llmthrottle's
   table), so no peer pays for a disk.
3. **Exactness across processes**: a limit that binds, 100 per hour (GCRA burst 100; pyrate
   `Rate(100, HOUR)`; token-throttle `Quota(limit=100, per_seconds=3600)`), hammered by 2
   processes (and llmthrottle by 8) for `--duration` seconds on one key: total admitted vs 100.

The machine's core count bounds the multi-process numbers (printed with the tables).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

N_KEYS = 100_000
KEYS = [f"user-{i:06d}" for i in range(N_KEYS)]
ONE_KEY = "tenant-acme"
LIMIT = 100  # per hour, for exactness
# Exactness runs per library: (processes, limit per hour). The first process past the barrier
# can take 100 in microseconds alone; 100k keeps 8 llmthrottle processes racing for ~0.1 s.
EXACT_RUNS = {"llmthrottle-shared": [(2, LIMIT), (8, LIMIT), (8, 100_000)]}

LT_LIBS = ["llmthrottle-shared", "llmthrottle-inprocess"]
PYRATE_LIBS = ["pyrate-mp", "pyrate-sqlite", "pyrate-inmemory"]
TT_LIBS = ["tt-sqlite", "tt-memory"]
ALL_LIBS = LT_LIBS + PYRATE_LIBS + TT_LIBS

LABELS = {
    "llmthrottle-shared": ("**llmthrottle** SharedState", "yes"),
    "llmthrottle-inprocess": ("llmthrottle InProcessState (reference)", "no (per process)"),
    "pyrate-mp": ("pyrate-limiter MultiprocessBucket", "yes"),
    "pyrate-sqlite": ("pyrate-limiter SQLiteBucket + file lock", "yes"),
    "pyrate-inmemory": ("pyrate-limiter InMemoryBucket (reference)", "no (per process)"),
    "tt-sqlite": ("token-throttle SyncSqliteBackend", "yes"),
    "tt-memory": ("token-throttle SyncMemoryBackend (reference)", "no (per process)"),
}

# (label, processes, distinct keys)
SHAPES = [("1 proc, 1 key", 1, False), ("2 procs, 1 key", 2, False), ("2 procs, a key each", 2, True)]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# 1. ns per allowed decision


def micro(repeats: int, target_ms: float) -> tuple[list[dict], dict]:
    import llmthrottle as lt

    name = f"bench-micro-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shared = lt.SharedState(name, capacity=4 * N_KEYS)
    try:
        return _micro(lt, shared, repeats, target_ms)
    finally:
        lt.SharedState.remove(name)


def _micro(lt: Any, shared: Any, repeats: int, target_ms: float) -> tuple[list[dict], dict]:
    class Trivial:
        def method(self, key: str) -> bool:
            return True

    def make(state: Any, dims: int) -> tuple[Callable[[list], None], Callable[[str], bool]]:
        limits = {"requests": "1G/s"} if dims == 1 else {"requests": "1G/s", "tokens": "1G/s"}
        f = lt.Limiter(limits, state=state).try_acquire
        if dims == 1:

            def run(keys: list) -> None:
                for k in keys:
                    f(k)

            return run, lambda k: bool(f(k))

        def run2(keys: list) -> None:
            for k in keys:
                f(k, tokens=10)

        return run2, lambda k: bool(f(k, tokens=10))

    def make_floor() -> tuple[Callable[[list], None], Callable[[str], bool]]:
        f = Trivial().method

        def run(keys: list) -> None:
            for k in keys:
                f(k)

        return run, f

    def timed(run: Callable[[list], None], keys: list) -> float:
        start = time.perf_counter_ns()
        run(keys)
        return (time.perf_counter_ns() - start) / len(keys)

    cases = [("floor", 1, "1 key", None)]
    for dims in (1, 2):
        for shape in ("1 key", "100k keys"):
            for state_name in ("InProcessState", "SharedState"):
                cases.append((state_name, dims, shape, shared if state_name == "SharedState" else lt.InProcessState()))
    instances = []
    for state_name, dims, shape, state in cases:
        run, check = make_floor() if state is None else make(state, dims)
        warm = [ONE_KEY] * 1000 if shape == "1 key" else KEYS
        run(warm)
        per_call = min(timed(run, warm[:1000]) for _ in range(2))
        n = int(max(1000, min(N_KEYS, target_ms * 1e6 / per_call)))
        if shape == "1 key":
            batches = [[ONE_KEY] * n] * repeats
        else:
            batches = [[KEYS[(r * n + i) % N_KEYS] for i in range(n)] for r in range(repeats)]
        sample = [ONE_KEY] * 20 if shape == "1 key" else KEYS[:: N_KEYS // 50]
        assert all(check(k) for k in sample), f"{state_name} {dims}d {shape}: a sampled decision was denied"
        instances.append(
            {
                "state": state_name,
                "dims": dims,
                "shape": shape,
                "run": run,
                "check": check,
                "batches": batches,
                "sample": sample,
                "best": float("inf"),
            }
        )
        log(f"  micro ready: {state_name:14} {dims}d {shape:9} ~{per_call:6.0f} ns, n={n}")
    gc.collect()
    gc.freeze()
    for r in range(repeats):
        shift = r % len(instances)
        for inst in instances[shift:] + instances[:shift]:
            gc.disable()
            try:
                ns = timed(inst["run"], inst["batches"][r])
            finally:
                gc.enable()
            inst["best"] = min(inst["best"], ns)
    gc.unfreeze()
    for inst in instances:
        assert all(inst["check"](k) for k in inst["sample"]), "a sampled decision was denied after timing"
    rows = [{k: inst[k] for k in ("state", "dims", "shape", "best")} for inst in instances]
    return rows, shared.stats()


def micro_table(rows: list[dict], stats: dict) -> str:
    floor = next(r["best"] for r in rows if r["state"] == "floor")
    out = [
        "| dims | keys | InProcessState ns | SharedState ns | ratio shared / in-process | goal (≤ 1.3×, ≤ 150 ns) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for dims in (1, 2):
        for shape in ("1 key", "100k keys"):
            local = next(
                r["best"] for r in rows if (r["state"], r["dims"], r["shape"]) == ("InProcessState", dims, shape)
            )
            shm = next(r["best"] for r in rows if (r["state"], r["dims"], r["shape"]) == ("SharedState", dims, shape))
            ok = shm <= 150 and shm <= 1.3 * local
            out.append(
                f"| {dims} | {shape} | {local:,.0f} | {shm:,.0f} | {shm / local:.2f}× | {'met' if ok else 'NOT met'} |"
            )
    out.append(
        f"\nfloor: a bare pre-bound Python method call in the same loop, {floor:,.0f} ns. "
        f'Limits: `{{"requests": "1G/s"}}`, 2 dims adds `"tokens": "1G/s"` and `tokens=10`. '
        f"SharedState table: capacity {stats['capacity']:,} keys, {stats['file_bytes'] / 2**20:,.0f} MiB."
    )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Backends for the process runs: each returns (decide(key) -> bool, close()) built in the child.


def _backend(lib: str, spec: dict, binding: int) -> tuple[Callable[[str], bool], Callable[[], None]]:
    if lib.startswith("llmthrottle"):
        import llmthrottle as lt

        limits = {"requests": f"{binding}/h"} if binding else {"requests": "1G/s"}
        state = lt.SharedState(spec["shm_name"]) if lib == "llmthrottle-shared" else lt.InProcessState()
        f = lt.Limiter(limits, state=state).try_acquire
        return (lambda k: bool(f(k))), (lambda: None)
    if lib.startswith("pyrate"):
        from pyrate_limiter import InMemoryBucket, Limiter, SQLiteBucket

        def key_bucket(key: str) -> Any:
            if lib == "pyrate-mp":
                return spec["mp_buckets"][key]
            if lib == "pyrate-sqlite":
                return SQLiteBucket.init_from_file(
                    _pyrate_rates(binding), table=_table(key), db_path=spec["db"], use_file_lock=True
                )
            return InMemoryBucket(_pyrate_rates(binding))

        limiters: dict[str, Any] = {}
        timeout = 0.05 if binding else -1

        def decide(key: str) -> bool:
            lim = limiters.get(key)
            if lim is None:
                lim = limiters[key] = Limiter(key_bucket(key))
            # blocking=False would fail at once whenever another process holds the lock (a
            # spurious denial), and raises TypeError on the SQLite bucket's file lock with
            # filelock 4.x (pyrate calls lock.acquire(False)). blocking=True only waits for
            # the lock here: a limit that never binds never sleeps, and a binding one returns
            # False once the timeout has passed.
            return bool(lim.try_acquire(key, 1, blocking=True, timeout=timeout))

        def close() -> None:
            for lim in limiters.values():
                lim.close()

        return decide, close
    if lib.startswith("tt"):
        import token_throttle as tt

        quota = (
            tt.Quota(metric="requests", limit=binding, per_seconds=3600)
            if binding
            else tt.Quota(metric="requests", limit=10**9, per_seconds=1)
        )
        cfg = tt.PerModelConfig(quotas=tt.UsageQuotas([quota]))
        builder = (
            tt.SyncSqliteBackendBuilder(spec["db"], key_prefix="bench")
            if lib == "tt-sqlite"
            else tt.SyncMemoryBackendBuilder()
        )
        lim = tt.SyncRateLimiter(cfg, backend=builder)
        usage = {"requests": 1}
        acquire, refund = lim.acquire_capacity, lim.refund_capacity
        if binding:

            def decide(key: str) -> bool:
                try:  # timeout=0: a denial (no capacity, or the SQLite write lock is busy)
                    acquire(usage, key, timeout=0)
                except TimeoutError:
                    return False
                return True  # kept: the capacity stays consumed
        else:

            def decide(key: str) -> bool:
                # timeout=None: waits for the SQLite write lock (timeout=0 raises
                # TimeoutError as soon as another process holds it).
                refund(usage, acquire(usage, key, timeout=None))
                return True

        def close() -> None:
            import contextlib
            import io

            with contextlib.redirect_stderr(io.StringIO()):  # "N reservations still in flight"
                lim.close()

        return decide, close
    raise ValueError(lib)


def _pyrate_rates(binding: int) -> list:
    from pyrate_limiter import Duration, Rate

    return [Rate(binding, Duration.HOUR)] if binding else [Rate(10**7, 10)]


def _table(key: str) -> str:
    return "bucket_" + "".join(c if c.isalnum() else "_" for c in key)


def _worker(lib: str, spec: dict, key: str, duration: float, binding: int, barrier: Any, out: Any) -> None:
    try:
        decide, close = _backend(lib, spec, binding)
        if not binding:
            decide(key)  # warm-up: the key's state exists before the clock starts
        barrier.wait()
        t0 = time.monotonic_ns()
        start = time.perf_counter()
        deadline = start + duration
        n = ok = 0
        batch = 1
        while True:
            t = time.perf_counter()
            for _ in range(batch):
                ok += decide(key)
            n += batch
            now = time.perf_counter()
            if now >= deadline:
                break
            if batch < 4096 and now - t < 0.001:
                batch *= 2
        out.put({"n": n, "ok": ok, "elapsed": now - start, "t0": t0, "t1": time.monotonic_ns()})
        close()
    except BaseException as e:  # reported by the parent
        out.put({"error": f"{type(e).__name__}: {e}"[:300]})
        try:
            barrier.abort()
        except Exception:
            pass


def _run(lib: str, spec: dict, procs: int, distinct: bool, duration: float, binding: int) -> dict:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    keys = [f"k{i}" if distinct else "k" for i in range(procs)]
    children = [ctx.Process(target=_worker, args=(lib, spec, key, duration, binding, barrier, out)) for key in keys]
    for c in children:
        c.start()
    reports = [out.get(timeout=duration + 120) for _ in children]
    for c in children:
        c.join(timeout=30)
        if c.is_alive():
            c.terminate()
            c.join()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        return {"error": errors[0]}
    return {
        "rate": sum(r["ok"] / r["elapsed"] for r in reports),
        "ok": sum(r["ok"] for r in reports),
        "n": sum(r["n"] for r in reports),
        "per_process_ok": [r["ok"] for r in reports],
        "span_ns": max(r["t1"] for r in reports) - min(r["t0"] for r in reports),
        "limit": binding,
    }


def _setup(lib: str, scratch: str, binding: int, keys: list[str]) -> tuple[dict, Callable[[], None]]:
    """What must exist before the children fork: a fresh table / database / MP buckets."""
    tag = uuid.uuid4().hex[:8]
    if lib == "llmthrottle-shared":
        import llmthrottle as lt

        name = f"bench-{os.getpid()}-{tag}"
        lt.SharedState(name)
        return {"shm_name": name}, lambda: lt.SharedState.remove(name)
    if lib == "pyrate-mp":
        from multiprocessing import Manager

        from pyrate_limiter import MultiprocessBucket

        managers, buckets = [], {}
        for key in keys:
            manager = Manager()
            managers.append(manager)
            # As MultiprocessBucket.init() does, keeping the Manager to shut it down.
            buckets[key] = MultiprocessBucket(_pyrate_rates(binding), manager.list(), mp.get_context("fork").RLock())
        return {"mp_buckets": buckets}, lambda: [m.shutdown() for m in managers]
    if lib in ("pyrate-sqlite", "tt-sqlite"):
        db = os.path.join(scratch, f"{lib}-{tag}.sqlite")
        if lib == "pyrate-sqlite":  # tables made once here, not raced by the children
            from pyrate_limiter import SQLiteBucket

            for key in keys:
                SQLiteBucket.init_from_file(
                    _pyrate_rates(binding), table=_table(key), db_path=db, use_file_lock=True
                ).close()
        return {"db": db}, lambda: None
    return {}, lambda: None


def processes(libs: list[str], duration: float) -> dict:
    """Throughput and exactness for `libs` (all importable in this interpreter)."""
    scratch = tempfile.mkdtemp(prefix="bench-shared-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    results: dict = {"throughput": {}, "exactness": {}}
    try:
        for lib in libs:
            for label, procs, distinct in SHAPES:
                keys = [f"k{i}" for i in range(procs)] if distinct else ["k"]
                spec, cleanup = _setup(lib, scratch, 0, keys)
                try:
                    r = _run(lib, spec, procs, distinct, duration, binding=0)
                finally:
                    cleanup()
                results["throughput"].setdefault(lib, {})[label] = r
                log(f"  throughput {lib:22} {label:20} " + (f"{r['rate']:12,.0f} /s" if "rate" in r else r["error"]))
            for procs, limit in EXACT_RUNS.get(lib, [(2, LIMIT)]):
                spec, cleanup = _setup(lib, scratch, limit, ["k"])
                try:
                    r = _run(lib, spec, procs, False, min(duration, 1.0), binding=limit)
                finally:
                    cleanup()
                results["exactness"].setdefault(lib, []).append({"procs": procs, "limit": limit, **r})
                log(
                    f"  exactness  {lib:22} {procs} procs, {limit}/h: "
                    + (f"{r['ok']} admitted of {r['n']} tries" if "ok" in r else r["error"])
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _tt_subprocess(python: str, duration: float, libs: list[str]) -> dict:
    command = [
        python,
        os.path.abspath(__file__),
        "--processes-only",
        "--json",
        "--duration",
        str(duration),
        "--only",
        ",".join(libs),
    ]
    log(f"  token-throttle: running {' '.join(command)}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-500:])
    for line in done.stderr.splitlines():
        log("    " + line)
    data = json.loads(done.stdout)
    data["python"] = data.get("python", "?")
    return data


def _fmt_rate(r: dict | None) -> str:
    if not r:
        return "n/a"
    if "error" in r:
        return "error"
    rate = r["rate"]
    return f"{rate / 1e6:,.2f} M" if rate >= 1e6 else f"{rate / 1e3:,.1f} k" if rate >= 1e3 else f"{rate:,.0f}"


def throughput_table(results: dict, unavailable: dict, tt_python: str) -> str:
    base = results["throughput"].get("llmthrottle-shared", {})
    head = (
        "| library | cross-process exact | "
        + " | ".join(f"{label} (allowed/s) | llmthrottle ÷ this" for label, _, _ in SHAPES)
        + " | 2 procs ÷ 1 proc (1 key) |"
    )
    out = [head, "|---|---|" + "---:|---:|" * len(SHAPES) + "---:|"]
    notes = []
    for lib in ALL_LIBS:
        name, exact = LABELS[lib]
        if lib in unavailable:
            out.append(f"| {name} | {exact} | " + " | ".join("n/a | —" for _ in SHAPES) + " | — |")
            notes.append(f"- {name}: n/a — {unavailable[lib]}")
            continue
        row = results["throughput"].get(lib, {})
        cells = []
        for label, _, _ in SHAPES:
            r, b = row.get(label), base.get(label)
            cells.append(_fmt_rate(r))
            if r and "rate" in r and b and "rate" in b:
                ratio = b["rate"] / r["rate"]
                cells.append(f"{ratio:,.2f}×" if ratio < 10 else f"{ratio:,.0f}×")
            else:
                cells.append("—")
            if r and "error" in r:
                notes.append(f"- {name} {label}: {r['error']}")
            elif r and r["ok"] < r["n"]:
                notes.append(
                    f"- {name} {label}: {r['n'] - r['ok']:,} of {r['n']:,} decisions denied "
                    "although the limit never binds"
                )
        one, two = row.get(SHAPES[0][0]), row.get(SHAPES[1][0])
        scaling = f"{two['rate'] / one['rate']:.2f}×" if one and two and "rate" in one and "rate" in two else "—"
        if lib.startswith("tt") and tt_python:
            name += " [py3.12 subprocess]"
        out.append(f"| {name} | {exact} | " + " | ".join(cells) + f" | {scaling} |")
    if notes:
        out.append("\n" + "\n".join(notes))
    return "\n".join(out)


def exactness_table(results: dict, unavailable: dict) -> str:
    out = [
        "| library | processes | limit | allowed: limit + refill during the run | admitted (per process) "
        "| over-admitted | exact |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for lib in ALL_LIBS:
        if lib in unavailable:
            continue
        name, _ = LABELS[lib]
        for r in results["exactness"].get(lib, []):
            procs, limit = r["procs"], r["limit"]
            if "error" in r:
                out.append(f"| {name} | {procs} | {limit:,}/h | | error: {r['error']} | | |")
                continue
            # GCRA refills limit/hour continuously; a window log of 1 h refills nothing within it.
            allowed = limit + limit * r["span_ns"] // (3600 * 10**9)
            over = max(0, r["ok"] - allowed)
            if over:
                verdict = f"{r['ok'] / limit:.1f}× the limit"
            else:
                verdict = "**exact**" if r["ok"] >= limit else f"under by {limit - r['ok']}"
            split = (
                "+".join(str(x) for x in r["per_process_ok"])
                if procs <= 8 and limit < 10**4
                else "+".join(f"{x:,}" for x in r["per_process_ok"])
            )
            out.append(
                f"| {name} | {procs} | {limit:,}/h | {allowed:,} | {r['ok']:,} ({split}) | {over:,} | {verdict} |"
            )
    return "\n".join(out)


def _available(libs: list[str]) -> tuple[list[str], dict]:
    unavailable: dict = {}
    ok = []
    for lib in libs:
        module = (
            "llmthrottle"
            if lib.startswith("llmthrottle")
            else "pyrate_limiter"
            if lib.startswith("pyrate")
            else "token_throttle"
        )
        try:
            __import__(module)
            if lib == "pyrate-sqlite":
                __import__("filelock")
            ok.append(lib)
        except ImportError as e:
            unavailable[lib] = f"{e}"
    return ok, unavailable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=1.5, help="seconds each process decides for")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds of the ns/call table")
    parser.add_argument("--target-ms", type=float, default=20.0, help="length of one timed ns/call loop")
    parser.add_argument("--only", default="", help=f"subset of the process-run libraries: {','.join(ALL_LIBS)}")
    parser.add_argument(
        "--token-throttle-python",
        default="",
        help="a Python >= 3.12 with token-throttle installed, to run it in a subprocess",
    )
    parser.add_argument("--processes-only", action="store_true", help="skip the ns/call table")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    selected = [s for s in args.only.split(",") if s] or ALL_LIBS
    if set(selected) - set(ALL_LIBS):
        parser.error(f"unknown {sorted(set(selected) - set(ALL_LIBS))}; choose from {ALL_LIBS}")
    started = time.perf_counter()

    micro_rows, stats = ([], {}) if args.processes_only else (None, None)
    if not args.processes_only:
        log("ns per allowed decision:")
        micro_rows, stats = micro(args.repeats, args.target_ms)

    local, unavailable = _available(selected)
    tt_wanted = [lib for lib in selected if lib in TT_LIBS and lib in unavailable]
    log("processes:")
    results = processes(local, args.duration)
    if tt_wanted and args.token_throttle_python:
        try:
            sub = _tt_subprocess(args.token_throttle_python, args.duration, tt_wanted)
            for part in ("throughput", "exactness"):
                results[part].update(sub[part])
            for lib in tt_wanted:
                unavailable.pop(lib, None)
        except Exception as e:
            for lib in tt_wanted:
                unavailable[lib] = f"subprocess failed: {e}"[:300]
    elif tt_wanted:
        for lib in tt_wanted:
            unavailable[lib] = (
                f"needs Python >= 3.12 (this is {platform.python_version()}); pass --token-throttle-python"
            )
    for lib in ALL_LIBS:
        if lib not in selected:
            unavailable.setdefault(lib, "not selected (--only)")

    if args.json:
        print(json.dumps({**results, "micro": micro_rows, "python": platform.python_version()}))
        return
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"# bench_shared — Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{platform.machine()}, load average {load} at the end, {time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    if micro_rows:
        print(f"## ns per allowed `try_acquire` (best of {args.repeats} interleaved rounds, loop overhead included)\n")
        print(micro_table(micro_rows, stats))
    print(f"\n## Aggregate throughput, limits never bind ({args.duration:g} s per process)\n")
    print(throughput_table(results, unavailable, args.token_throttle_python))
    print(
        "\nllmthrottle ÷ this: llmthrottle SharedState's allowed decisions/s over this row's "
        f"(below 1: faster than SharedState). {os.cpu_count()} CPUs: 2 processes can at best double."
    )
    print(
        f"\n## Exactness across processes: a limit per hour on one key, "
        f"{min(args.duration, 1.0):g} s of tries per process\n"
    )
    print(exactness_table(results, unavailable))
    print(f"\ntotal bench time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
