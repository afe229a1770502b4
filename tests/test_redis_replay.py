"""The replay journal (`RedisState(replay_dir=...)`): what a process kept while Redis was down
outlives it, and the next process on the directory replays it, exactly once."""

from __future__ import annotations

import logging
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis_servers import RedisServer

import llmthrottle as lt
from llmthrottle.redis_state.replay import ReplayQueue
from llmthrottle.redis_state.script import Call

QUOTA = {"tokens": {"quota": 100_000, "per": "day"}}


def fresh_prefix() -> str:
    return f"j{uuid.uuid4().hex[:12]}:"


def _keep_usage_then_wait(url: str, prefix: str, directory: str) -> None:
    """The child: reserves while Redis is up, then (told Redis is down) commits more than it
    reserved and charges more, which are kept, then waits for its SIGKILL."""
    state = lt.RedisState(url, prefix=prefix, replay_dir=directory, timeout=0.5, retry_interval=600)
    lim = lt.Limiter(QUOTA, state=state)
    reservation = lim.try_acquire("k", tokens=1000)
    assert reservation
    print("reserved", flush=True)
    sys.stdin.readline()
    reservation.commit(tokens=4000)  # Redis is down: +3000 kept
    lim.charge("k", tokens=300)  # kept
    print("kept", state.pending, flush=True)
    sys.stdin.readline()


def _start_child(url: str, prefix: str, directory: Path) -> subprocess.Popen[str]:
    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_redis_replay import _keep_usage_then_wait; "
        f"_keep_usage_then_wait({url!r}, {prefix!r}, {str(directory)!r})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )


def test_usage_kept_by_a_process_killed_while_redis_was_down_is_counted_once_by_the_next(
    own_server: RedisServer, tmp_path: Path
) -> None:
    directory = tmp_path / "replay"
    prefix = fresh_prefix()
    child = _start_child(own_server.url, prefix, directory)
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "reserved"
        own_server.kill()
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().split() == ["kept", "2"]
        [journal] = directory.glob("*.journal")
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert len(journal.read_bytes().splitlines()) == 2  # on disk before commit() returned

        # A process that starts while the child lives leaves the child's journal alone.
        bystander = lt.RedisState(own_server.url, prefix=prefix, replay_dir=directory)
        assert bystander.pending == 0
        bystander.close()
        assert journal.exists()

        child.kill()  # SIGKILL: no cleanup, no close()
        child.communicate()
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    # The same operations twice over (a journal copied, or taken over twice): still once.
    shutil.copy(journal, directory / "copy.journal")
    own_server.start()  # the append-only file brings back the reservation's 1000

    state = lt.RedisState(own_server.url, prefix=prefix, replay_dir=directory)
    try:
        assert state.pending == 4  # taken over when the state was made
        lim = lt.Limiter(QUOTA, state=state)
        assert lim.status("k")[0].used == 1000 + 3000 + 300  # replayed before the status call
        assert state.pending == 0 and state.stats["replayed"] == 4
        assert list(directory.iterdir()) == []  # replayed: no journal is left
        again = lt.RedisState(own_server.url, prefix=prefix, replay_dir=directory)
        assert again.pending == 0
        again.close()
        assert lim.status("k")[0].used == 4300
    finally:
        state.close()


def test_a_live_process_replays_its_own_journal_and_removes_it(own_server: RedisServer, tmp_path: Path) -> None:
    directory = tmp_path / "replay"
    state = lt.RedisState(own_server.url, prefix=fresh_prefix(), replay_dir=directory, retry_interval=0.05)
    try:
        lim = lt.Limiter(QUOTA, state=state)
        own_server.kill()
        lim.charge("k", tokens=100)
        lim.charge("k", tokens=20)
        assert len(next(directory.glob("*.journal")).read_bytes().splitlines()) == 2
        own_server.start()
        time.sleep(0.1)  # past retry_interval: the next call tries Redis again
        assert lim.status("k")[0].used == 120
        assert state.pending == 0 and list(directory.iterdir()) == []
    finally:
        state.close()


def test_a_damaged_journal_line_is_passed_over_with_one_log_line_per_file(
    own_server: RedisServer, tmp_path: Path, caplog: Any
) -> None:
    directory = tmp_path / "replay"
    prefix = fresh_prefix()
    writer = lt.RedisState(own_server.url, prefix=prefix, replay_dir=directory, retry_interval=600)
    lim = lt.Limiter(QUOTA, state=writer)
    own_server.kill()
    lim.charge("k", tokens=100)
    lim.charge("k", tokens=20)
    writer.close()  # closed with settlements kept: the journal stays for the next process
    [journal] = directory.glob("*.journal")
    first, second = journal.read_bytes().splitlines()
    wrong_marker = first.replace(b":op:", b":op:x", 1)  # a marker that is not its operation's
    journal.write_bytes(
        first
        + b"\nnot json\n"
        + b'{"op": "x"}\n[1, 2]\n\xff\xfe\x00\n'
        + wrong_marker
        + b"\n"
        + second
        + b"\n"
        + second[: len(second) // 2]  # a write cut short by the crash
    )
    (directory / "other.journal").write_bytes(b"garbage\n{}\n")
    own_server.start()
    with caplog.at_level(logging.WARNING, logger="llmthrottle"):
        state = lt.RedisState(own_server.url, prefix=prefix, replay_dir=directory)
    try:
        assert state.pending == 2
        damaged = [r.getMessage() for r in caplog.records if "passed over" in r.getMessage()]
        assert len(damaged) == 2  # one line per file, not per line
        assert any("6 damaged" in message and journal.name in message for message in damaged)
        assert any("2 damaged" in message and "other.journal" in message for message in damaged)
        assert lt.Limiter(QUOTA, state=state).status("k")[0].used == 120
        assert list(directory.iterdir()) == []
    finally:
        state.close()


def test_a_journal_holds_at_most_twice_what_is_kept(tmp_path: Path) -> None:
    """Past `limit` kept calls the oldest go, and the journal is rewritten with what is left."""
    queue = ReplayQueue(limit=3, directory=tmp_path)
    for amount in range(1, 11):
        queue.keep(Call([f"cell{amount}"], ["settle", "", "", 0, "", 0, "q", 100, 0, 0, amount, ""]))
        assert queue.journal is not None
        assert len(queue.journal.path.read_bytes().splitlines()) <= 6
    assert len(queue) == 3 and queue.dropped == 7
    lines = queue.journal.path.read_bytes().splitlines()
    assert all(line.count(b'"cell') == 2 for line in lines)  # the cell and its marker
    assert lines[-1].startswith(b'{"op"') and b'"cell10"' in lines[-1]
    queue.close()
    assert queue.journal.path.exists()  # left for the next process: three calls are kept
    successor = ReplayQueue(limit=10, directory=tmp_path)
    assert successor.adopt() >= 3
    assert [call.keys[0] for _, call in successor.items][-3:] == ["cell8", "cell9", "cell10"]
    successor.close()


def test_replay_dir_is_checked(tmp_path: Path, redis_server: RedisServer) -> None:
    from llmthrottle.sidecar.config import load_config

    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(lt.ConfigError, match="replay_dir"):
        lt.RedisState(redis_server.url, replay_dir=a_file)
    with pytest.raises(lt.ConfigError, match="replay_dir"):
        lt.RedisState(redis_server.url, replay_dir=42)  # type: ignore[arg-type]
    policy = tmp_path / "llmthrottle.toml"
    policy.write_text(f'[state]\nkind = "redis"\nurl = "{redis_server.url}"\nreplay_dir = 7\n')
    with pytest.raises(lt.ConfigError, match=r"state\.replay_dir.*must be a str"):
        load_config(str(policy))
    policy.write_text(f'[state]\nkind = "redis"\nurl = "{redis_server.url}"\nreplay_dir = "{tmp_path / "r"}"\n')
    assert load_config(str(policy)).state_redis_options == {"replay_dir": str(tmp_path / "r")}
    policy.write_text(f'[state]\nkind = "shared"\nreplay_dir = "{tmp_path / "r"}"\n')
    with pytest.raises(lt.ConfigError, match='needs kind = "redis"'):
        load_config(str(policy))


def test_a_forked_child_journals_apart_and_leaves_the_parents_journal_alone(
    own_server: RedisServer, tmp_path: Path
) -> None:
    """A child inherits the parent's open, locked journal: it writes its own, and when it dies
    only its own is taken over (the parent's lock outlives the child's copy of the file)."""
    import os

    directory = tmp_path / "replay"
    prefix = fresh_prefix()
    state = lt.RedisState(own_server.url, prefix=prefix, replay_dir=directory, retry_interval=0.05)
    lim = lt.Limiter(QUOTA, state=state)
    own_server.kill()
    lim.charge("k", tokens=100)
    [parents] = directory.glob("*.journal")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            lim.charge("k", tokens=20)
            code = 0 if len(list(directory.glob("*.journal"))) == 2 else 2
        finally:
            os._exit(code)  # dies without closing anything
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(parents.read_bytes().splitlines()) == 1
    own_server.start()
    successor = lt.RedisState(own_server.url, prefix=prefix, replay_dir=directory)
    try:
        assert successor.pending == 1  # the child's charge; the parent lives and holds its own
        assert parents.exists()
        assert lt.Limiter(QUOTA, state=successor).status("k")[0].used == 20
        time.sleep(0.1)  # past retry_interval: the parent tries Redis again, and replays its own
        assert lim.status("k")[0].used == 120
        assert list(directory.iterdir()) == []
    finally:
        successor.close()
        state.close()


def test_an_async_decision_replays_what_was_taken_over_first(own_server: RedisServer, tmp_path: Path) -> None:
    import asyncio

    directory = tmp_path / "replay"
    prefix = fresh_prefix()
    writer = lt.RedisState(own_server.url, prefix=prefix, replay_dir=directory, retry_interval=600)
    own_server.kill()
    lt.Limiter(QUOTA, state=writer).charge("k", tokens=700)
    writer.close()  # as a process that died: its journal stays
    own_server.start()
    state = lt.RedisState(own_server.url, prefix=prefix, replay_dir=directory)
    try:
        lim = lt.Limiter(QUOTA, state=state)
        assert state.pending == 1
        decision = asyncio.run(lim.try_acquire_async("k", tokens=100))
        assert decision and decision.remaining == {"tokens": 100_000 - 700 - 100}
        assert state.pending == 0 and list(directory.iterdir()) == []
    finally:
        state.close()


def test_a_deeply_nested_journal_line_is_passed_over_like_any_damaged_line(tmp_path: Path, caplog: Any) -> None:
    """A line of stray bytes nested past the JSON parser's depth is damaged, not a crash of the
    process taking the journal over."""
    writer = ReplayQueue(limit=10, directory=tmp_path)
    writer.keep(Call(["cell"], ["settle", "", "", 0, "", 0, "q", 100, 0, 0, 7, ""]))
    assert writer.journal is not None
    path = writer.journal.path
    writer.close()  # left for the next process, one call kept
    path.write_bytes(b"[" * 200_000 + b"\n" + path.read_bytes())
    successor = ReplayQueue(limit=10, directory=tmp_path)
    with caplog.at_level(logging.WARNING, logger="llmthrottle"):
        assert successor.adopt() == 1
    assert [call.keys[0] for _, call in successor.items] == ["cell"]
    assert any("1 damaged" in record.getMessage() for record in caplog.records)
    successor.close()
