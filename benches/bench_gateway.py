"""The latency the gateway adds, beside direct calls, a bare aiohttp proxy and LiteLLM's proxy.

    python benches/bench_gateway.py [--seconds 30] [--rates 100 500 1000] [--no-bare] [--no-litellm]

One fake upstream (`llmthrottle fake-provider`, its own process, a fixed `--upstream-latency`
before every reply) serves four ways in: direct; through a bare pass-through proxy
(benches/bare_proxy.py: the gateway's stack, aiohttp on uvloop with as many workers as the
gateway sharing one port, one client per worker set up as the gateway's, and none of
llmthrottle: the floor of what the stack alone adds); through `llmthrottle gateway` (a virtual
key in a tier with limits it never reaches, the ledger on); and through LiteLLM's proxy
(`litellm --config`, installed with `pip install 'litellm[proxy]'`, its master key: its virtual
keys need a Postgres database this machine does not run). A load generator in another process
sends chat completions open-loop at each rate for `--seconds` and records every latency.
Reported per rate: p50/p99 latency, the added p50/p99 (the same percentile minus direct's),
errors, the rate actually sustained, and the proxy's resident memory afterwards (all its
processes); then, per rate, the gateway's added p50/p99 minus the bare proxy's: what llmthrottle
itself adds on top of its stack. Goals (DESIGN.md): added p50 <= 0.3 ms and p99 <= 1 ms at 1,000
rps on 2 cores, >= 10x below LiteLLM, 0 errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from redis_servers import free_port

BARE = "bare aiohttp proxy"
GATEWAY = "llmthrottle gateway"


def body(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}).encode()


def wait_healthy(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


def resident_mb(pid: int) -> float:
    total = 0
    for child in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{child}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as file:
            direct = [int(p) for p in file.read().split()]
    except OSError:
        return []
    return direct + [grand for child in direct for grand in _children(child)]


# ---------------------------------------------------------------------------- the load generator


async def _load(url: str, key: str, model: str, rate: float, seconds: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    payload = body(model)
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            try:
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append(time.perf_counter() - started)

        for _ in range(20):  # warm connections
            await one()
        latencies.clear()
        errors = 0
        tasks = []
        began = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - began) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                tasks.append(asyncio.ensure_future(one()))
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
        took = time.perf_counter() - began
    latencies.sort()
    n = len(latencies)
    return {
        "p50": latencies[n // 2] * 1000 if n else float("nan"),
        "p99": latencies[int(n * 0.99)] * 1000 if n else float("nan"),
        "errors": errors,
        "sustained": n / took,
        "sent": sent,
    }


def _load_process(url: str, key: str, model: str, rate: float, seconds: float, out: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out.put(asyncio.run(_load(url, key, model, rate, seconds)))


def load(url: str, key: str, model: str, rate: float, seconds: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    worker = context.Process(target=_load_process, args=(url, key, model, rate, seconds, out))
    worker.start()
    result: dict[str, Any] = out.get(timeout=seconds + 300)
    worker.join(30)
    return result


# ---------------------------------------------------------------------------- the contenders


def start_upstream(port: int, latency: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmthrottle.cli", "fake-provider", "--port", str(port), "--ttft", str(latency)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_healthy(f"http://127.0.0.1:{port}/fake/counters", proc, "the fake provider")
    return proc


def start_bare(port: int, upstream_origin: str, workers: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("bare_proxy.py")),
            "--port",
            str(port),
            "--upstream",
            upstream_origin,
            "--workers",
            str(workers),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_healthy(f"http://127.0.0.1:{port}/health", proc, "the bare proxy")
    return proc


def start_gateway(directory: Path, port: int, upstream: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    config = directory / "llmthrottle.toml"
    config.write_text(f"""
[gateway]
listen = "127.0.0.1:{port}"
workers = {workers}
keys_db = "{directory}/keys.sqlite"
[tiers.bench]
requests = "10M/min"
tokens = "10G/min"
[models.fast]
deployments = [{{provider = "openai", model = "gpt-4o-mini", base_url = "{upstream}", api_key_env = "BENCH_UPSTREAM_KEY"}}]
[ledger]
path = "{directory}/ledger"
[state]
kind = "shared"
name = "bench-gateway-{os.getpid()}"
""")
    from llmthrottle.gateway import KeyStore

    store = KeyStore(str(directory / "keys.sqlite"))
    key = store.create(tenant="bench", tier="bench")[0]
    store.close()
    env = {**os.environ, "BENCH_UPSTREAM_KEY": "test"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmthrottle.cli", "gateway", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    wait_healthy(f"http://127.0.0.1:{port}/health", proc, "the gateway")
    return proc, key


def start_litellm(directory: Path, port: int, upstream: str) -> tuple[subprocess.Popen[bytes], str] | None:
    litellm = shutil.which("litellm") or str(Path(sys.executable).parent / "litellm")
    if not os.path.exists(litellm):
        return None
    config = directory / "litellm.yaml"
    config.write_text(f"""
model_list:
  - model_name: fast
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {upstream}
      api_key: test
general_settings:
  master_key: sk-bench
litellm_settings:
  telemetry: false
""")
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen(
        [litellm, "--config", str(config), "--port", str(port), "--host", "127.0.0.1", "--num_workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health/liveliness", proc, "LiteLLM's proxy", timeout=180)
    except RuntimeError as error:
        print(f"  LiteLLM's proxy: {error}", file=sys.stderr)
        proc.kill()
        proc.communicate()
        return None
    return proc, "sk-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--upstream-latency", type=float, default=0.02, help="seconds before every upstream reply")
    parser.add_argument("--no-bare", action="store_true", help="leave out the bare aiohttp proxy")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument(
        "--workers", type=int, default=2, help="gateway (and bare proxy) worker processes (default: %(default)s)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lt-bench-gateway-") as raw:
        directory = Path(raw)
        upstream_port = free_port()
        upstream = start_upstream(upstream_port, args.upstream_latency)
        upstream_origin = f"http://127.0.0.1:{upstream_port}"
        upstream_url = f"{upstream_origin}/v1"
        # name: (URL, key, model, the proxy's process)
        contenders: dict[str, tuple[str, str, str, subprocess.Popen[bytes] | None]] = {
            "direct": (f"{upstream_url}/chat/completions", "test", "gpt-4o-mini", None)
        }
        procs = [upstream]
        try:
            if not args.no_bare:
                bare_port = free_port()
                bare = start_bare(bare_port, upstream_origin, args.workers)
                procs.append(bare)
                contenders[BARE] = (f"http://127.0.0.1:{bare_port}/v1/chat/completions", "test", "gpt-4o-mini", bare)
            gateway_port = free_port()
            gateway, key = start_gateway(directory, gateway_port, upstream_url, args.workers)
            procs.append(gateway)
            contenders[GATEWAY] = (f"http://127.0.0.1:{gateway_port}/v1/chat/completions", key, "fast", gateway)
            if not args.no_litellm:
                litellm_port = free_port()
                started = start_litellm(directory, litellm_port, upstream_url)
                if started is not None:
                    procs.append(started[0])
                    contenders["LiteLLM proxy"] = (
                        f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
                        started[1],
                        "fast",
                        started[0],
                    )
            rows = []
            for rate in args.rates:
                results = {}
                for name, (url, secret, model, proc) in contenders.items():
                    results[name] = load(url, secret, model, rate, args.seconds)
                    results[name]["rss"] = resident_mb(proc.pid) if proc is not None else None
                    print(f"  {name} at {rate:g} rps: {results[name]}", file=sys.stderr, flush=True)
                rows.append((rate, results))
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
            from llmthrottle import SharedState

            SharedState.remove(f"bench-gateway-{os.getpid()}")
    print(
        f"\nupstream latency {args.upstream_latency * 1000:.0f} ms; {args.seconds:g} s per rate; "
        f"{os.cpu_count()} cores (load generator, proxy and upstream share them)\n"
    )
    print("| rate | way in | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | sustained rps | RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rate, results in rows:
        direct = results["direct"]
        for name, result in results.items():
            added = (
                ("-", "-")
                if name == "direct"
                else (f"{result['p50'] - direct['p50']:.2f}", f"{result['p99'] - direct['p99']:.2f}")
            )
            rss = "-" if result["rss"] is None else f"{result['rss']:.0f}"
            print(
                f"| {rate:g} | {name} | {result['p50']:.2f} | {result['p99']:.2f} | {added[0]} | {added[1]} | "
                f"{result['errors']} | {result['sustained']:.0f} | {rss} |"
            )
    if BARE in contenders:
        print(f"\nllmthrottle's own share: the gateway's added latency minus the {BARE}'s")
        for rate, results in rows:
            gateway_result, bare_result = results[GATEWAY], results[BARE]
            print(
                f"- {rate:g} rps: p50 {gateway_result['p50'] - bare_result['p50']:.2f} ms, "
                f"p99 {gateway_result['p99'] - bare_result['p99']:.2f} ms"
            )


if __name__ == "__main__":
    main()
