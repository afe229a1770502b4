"""The stubs match the native module, and typical user code type-checks strictly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

USER_CODE = textwrap.dedent(
    """
    import asyncio
    import llmthrottle as lt

    lim = lt.Limiter({"requests": "500/min", "tokens": "30k/min", "concurrency": 20})
    d: lt.Decision = lim.try_acquire("tenant:acme", requests=1, tokens=1200)
    allowed: bool = d.allowed
    wait: float = d.retry_after + d.reset_after
    by: str | None = d.limited_by
    left: dict[str, int | float] = d.remaining
    with lim.acquire("tenant:acme", tokens=1200, timeout=5.0) as r:
        r.commit(tokens=913)

    async def main() -> None:
        r = await lim.acquire_async(["user:1", "team:a"], tokens=10, timeout=1.0)
        r.cancel()

    asyncio.run(main())
    states: list[lt.LimitState] = lim.status("tenant:acme")
    """
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_stubs_match_the_native_module():
    allowlist = Path(__file__).with_name("stubtest-allowlist.txt")
    result = run("mypy.stubtest", "llmthrottle._native", "--ignore-disjoint-bases", "--allowlist", str(allowlist))
    assert result.returncode == 0, result.stdout + result.stderr


def test_user_code_type_checks_strictly(tmp_path: Path):
    path = tmp_path / "user_code.py"
    path.write_text(USER_CODE)
    result = run("mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(path))
    assert result.returncode == 0, result.stdout + result.stderr
