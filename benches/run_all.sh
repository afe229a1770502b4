#!/usr/bin/env bash
# Runs every benchmark in one go (about 10 minutes) and prints their tables: the figures quoted
# in the README and the issue notes. Peers: pip install -r benches/requirements.txt.
# Extra arguments go to the Python benchmarks that take --token-throttle-python.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
tt=()
if [ -n "${TOKEN_THROTTLE_PYTHON:-}" ]; then tt=(--token-throttle-python "$TOKEN_THROTTLE_PYTHON"); fi
echo "## Rust core (criterion)"
cargo bench -p llmthrottle-core --bench gcra -- --noplot 2>/dev/null | grep -E "^[A-Za-z].*|time:" | grep -v -E "^(Benchmarking|Found|Warning)"
cargo bench -p llmthrottle-core --bench shm -- --noplot 2>/dev/null | grep -E "^[A-Za-z].*|time:|thrpt:" | grep -v -E "^(Benchmarking|Found|Warning)"
echo "## Limiter vs peers";            python benches/bench_limiter.py "${tt[@]}"
echo "## Shared memory vs peers";      python benches/bench_shared.py "${tt[@]}"
echo "## Budgets on the decision path"; python benches/bench_budget.py
echo "## Ledger";                      python benches/bench_ledger.py
echo "## Tokens";                      python benches/bench_tokens.py
echo "## Sidecar";                     python benches/bench_sidecar.py
echo "## Redis vs peers";              python benches/bench_redis.py
echo "## Redis Cluster failover";      python benches/bench_redis_failover.py
echo "## Gateway vs LiteLLM";          python benches/bench_gateway.py --seconds 10
