"""The usage ledger: durable across SIGKILL, exactly-once, shared by threads and processes."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmthrottle.ledger import Ledger, UsageRecord
from llmthrottle.ledger.journal import encode_frame
from llmthrottle.pricing import cost

# A writer process: records forever (or `count` records), printing each id only after record()
# returned, so every printed id is a record the ledger accepted.
WRITER = textwrap.dedent("""
    import sys
    from llmthrottle.ledger import Ledger
    path, tenant, count, flush_interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    ledger = Ledger(path, flush_interval=flush_interval)
    i = 0
    while count < 0 or i < count:
        rid = ledger.record(model="gpt-4o", cost_micros=i % 1000 + 1, tenant=tenant,
                            input_tokens=i, tags={"seq": i})
        sys.stdout.write(rid + "\\n")
        sys.stdout.flush()
        i += 1
    if sys.argv[5] == "close":
        ledger.close()
    else:
        import os
        os._exit(0)  # no close, no atexit: the journal is left behind like after a crash
""")


def start_writer(
    path: Path, tenant: str, count: int, flush_interval: float = 0.05, ending: str = "close"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), tenant, str(count), str(flush_interval), ending],
        stdout=subprocess.PIPE,
        text=True,
    )


def journals(path: Path) -> list[str]:
    return sorted(glob.glob(str(path / "journal-*.log")))


def test_records_round_trip_with_every_field(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        rid = ledger.record(
            model="claude-sonnet-4-5",
            provider="anthropic",
            cost_micros=29_550,
            tenant="acme",
            user="u1",
            team="search",
            feature="summarise",
            input_tokens=100,
            output_tokens=500,
            cached_input_tokens=20_000,
            cache_write_tokens=3_000,
            reasoning_tokens=0,
            latency_s=1.25,
            outcome="ok",
            tags={"region": "eu", "attempt": 2},
            time=1_700_000_000.5,
        )
        (record,) = list(ledger.records())
    assert record == UsageRecord(
        id=rid,
        time=1_700_000_000.5,
        model="claude-sonnet-4-5",
        provider="anthropic",
        cost_micros=29_550,
        tenant="acme",
        user="u1",
        team="search",
        feature="summarise",
        input_tokens=100,
        output_tokens=500,
        cached_input_tokens=20_000,
        cache_write_tokens=3_000,
        reasoning_tokens=0,
        latency_s=1.25,
        outcome="ok",
        tags={"region": "eu", "attempt": 2},
    )
    assert journals(tmp_path) == []  # a clean close leaves no journal behind


def test_record_cost_takes_tokens_from_the_priced_usage(tmp_path: Path) -> None:
    c = cost(
        "gpt-4o",
        {
            "prompt_tokens": 10_000,
            "completion_tokens": 2_000,
            "prompt_tokens_details": {"cached_tokens": 4_000},
            "completion_tokens_details": {"reasoning_tokens": 500},
        },
    )
    with Ledger(tmp_path) as ledger:
        ledger.record_cost(c, tenant="acme", latency_s=0.5)
        (record,) = list(ledger.records())
    assert (
        record.input_tokens,
        record.cached_input_tokens,
        record.output_tokens,
        record.reasoning_tokens,
        record.cost_micros,
        record.provider,
    ) == (6_000, 4_000, 2_000, 500, 40_000, "openai")


def test_spend_filters_time_ranges_lists_tags_and_nulls(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        for day in range(10):
            for tenant in ("acme", "globex", None):
                ledger.record(
                    model="gpt-4o" if day % 2 else "o3",
                    cost_micros=100 + day,
                    tenant=tenant,
                    tags={"region": "eu" if day < 5 else "us"},
                    time=1_700_000_000 + day * 86_400,
                )
        assert ledger.spend() == 3 * sum(100 + d for d in range(10))
        assert ledger.spend(tenant="acme") == sum(100 + d for d in range(10))
        assert ledger.spend(tenant=None) == sum(100 + d for d in range(10))
        assert ledger.spend(tenant=["acme", "globex"]) == 2 * sum(100 + d for d in range(10))
        assert ledger.spend(region="eu", tenant="acme") == sum(100 + d for d in range(5))
        since, until = 1_700_000_000 + 2 * 86_400, 1_700_000_000 + 4 * 86_400
        assert ledger.spend(since=since, until=until, tenant="acme") == 102 + 103
        assert ledger.spend(model="o3", tenant="acme") == sum(100 + d for d in range(0, 10, 2))
        assert ledger.spend(tenant=[]) == 0
        with pytest.raises(ValueError, match="invalid tag name"):
            ledger.spend(**{"bad name'": 1})


def test_caller_id_is_an_idempotency_key(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        ledger.record(model="gpt-4o", cost_micros=10, id="req-1")
        ledger.record(model="gpt-4o", cost_micros=10, id="req-1")
        assert len(ledger) == 1 and ledger.spend() == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"output_tokens": True}, "output_tokens"),
        ({"cached_input_tokens": 10**13}, "cached_input_tokens"),
        ({"cost_micros": 1.5}, "cost_micros"),
        ({"latency_s": float("nan")}, "latency_s"),
        ({"tenant": 5}, "tenant"),
        ({"tags": {"x": float("nan")}}, "Out of range float"),
        ({"tags": {"x": object()}}, "not JSON serializable"),
        ({"model": ""}, "model"),
    ],
)
def test_invalid_records_are_rejected_and_not_stored(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"model": "gpt-4o", "cost_micros": 1, **kwargs}
    with Ledger(tmp_path) as ledger:
        with pytest.raises((ValueError, TypeError), match=message):
            ledger.record(**args)  # type: ignore[arg-type]
        assert len(ledger) == 0


def test_concurrent_threads(tmp_path: Path) -> None:
    with Ledger(tmp_path, rotate_bytes=64 * 1024) as ledger:
        ids: list[list[str]] = [[] for _ in range(8)]

        def write(n: int) -> None:
            for _ in range(2_000):
                ids[n].append(ledger.record(model="gpt-4o", cost_micros=1, tenant=f"t{n}"))

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({i for chunk in ids for i in chunk}) == 16_000
        assert len(ledger) == 16_000
        assert ledger.spend(tenant="t3") == 2_000
    assert journals(tmp_path) == []  # rotated journals were deleted once checkpointed


@pytest.mark.slow
def test_multiple_processes_write_one_ledger(tmp_path: Path) -> None:
    with Ledger(tmp_path) as reader:
        writers = [start_writer(tmp_path, f"p{n}", 3_000) for n in range(4)]
        reader.record(model="gpt-4o", cost_micros=7, tenant="parent")
        outputs = [w.communicate()[0].split() for w in writers]
        assert all(w.returncode == 0 for w in writers)
        assert all(len(o) == 3_000 for o in outputs)
        reader.flush()
        for n in range(4):
            assert reader.spend(tenant=f"p{n}") == sum(i % 1000 + 1 for i in range(3_000))
        assert len(reader) == 12_001
    assert journals(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("flush_interval", [0.01, 1000.0])  # partly flushed / journal only
def test_sigkill_mid_stream_loses_no_accepted_record_and_duplicates_none(tmp_path: Path, flush_interval: float) -> None:
    accepted: set[str] = set()
    for round_ in range(3):
        writer = start_writer(tmp_path, "killed", -1, flush_interval)
        assert writer.stdout is not None
        for _ in range(2_000 + 1_500 * round_):  # let it get well into the stream
            accepted.add(writer.stdout.readline().strip())
        os.kill(writer.pid, signal.SIGKILL)
        rest, _ = writer.communicate()
        accepted.update(rest.split())  # printed before the kill, still in the pipe
        assert writer.returncode == -signal.SIGKILL
    assert journals(tmp_path)  # the dead writers left their journals behind

    with Ledger(tmp_path) as ledger:
        stored = [r.id for r in ledger.records(tenant="killed")]
        assert len(stored) == len(set(stored))  # nothing counted twice
        assert accepted <= set(stored)  # nothing accepted was lost
        # A record may be stored that was accepted but killed before its id was printed.
        assert len(stored) - len(accepted) <= 3
        assert ledger.spend(tenant="killed") == sum(r.cost_micros for r in ledger.records(tenant="killed"))
    assert journals(tmp_path) == []

    with Ledger(tmp_path) as again:  # replaying again changes nothing
        assert len(again) == len(stored)


@pytest.mark.slow
def test_reopen_replays_a_journal_left_by_an_exit_without_close(tmp_path: Path) -> None:
    writer = start_writer(tmp_path, "exited", 500, flush_interval=1000.0, ending="exit")
    ids = writer.communicate()[0].split()
    assert len(journals(tmp_path)) == 1
    with Ledger(tmp_path) as ledger:
        assert {r.id for r in ledger.records()} == set(ids)


def write_raw_journal(path: Path, name: str, frames: list[bytes]) -> None:
    (path / name).write_bytes(b"".join(frames))


def raw_row(rid: str, cost_micros: int) -> bytes:
    import json

    row = [
        rid,
        1_700_000_000_000_000,
        "acme",
        None,
        None,
        None,
        "gpt-4o",
        None,
        1,
        1,
        0,
        0,
        0,
        cost_micros,
        None,
        "ok",
        None,
    ]
    return json.dumps(row, separators=(",", ":")).encode()


def test_torn_tail_and_corrupt_frames_are_skipped_on_replay(tmp_path: Path) -> None:
    Ledger(tmp_path).close()  # create the database
    good = [encode_frame(raw_row(f"r{i}", 10)) for i in range(5)]
    corrupt = bytearray(encode_frame(raw_row("bad", 1000)))
    corrupt[20] ^= 0xFF  # flip a payload byte: CRC mismatch
    torn = encode_frame(raw_row("torn", 1000))[:-7]  # crash mid-write
    write_raw_journal(tmp_path, "journal-999999-1-dead.log", [*good[:2], bytes(corrupt), *good[2:], torn])
    with Ledger(tmp_path) as ledger:
        assert sorted(r.id for r in ledger.records()) == [f"r{i}" for i in range(5)]
        assert ledger.spend() == 50
        stats = ledger.last_replay
        assert (stats.frames, stats.corrupt_frames, stats.torn_tail_bytes) == (5, 1, len(torn))
    assert journals(tmp_path) == []


def test_replay_resumes_from_checkpoint_and_is_idempotent(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        ledger.record(model="gpt-4o", cost_micros=10, id="r0")
    # A journal whose first frame was already stored (a crash after the SQLite commit but
    # before the journal was deleted): replay must not double count it.
    write_raw_journal(
        tmp_path, "journal-999999-2-dead.log", [encode_frame(raw_row("r0", 10)), encode_frame(raw_row("r1", 10))]
    )
    with Ledger(tmp_path) as ledger:
        assert ledger.spend() == 20 and len(ledger) == 2


def test_live_writers_journal_is_not_replayed_by_others(tmp_path: Path) -> None:
    with Ledger(tmp_path, flush_interval=1000.0) as writer:
        writer.record(model="gpt-4o", cost_micros=5)
        with Ledger(tmp_path) as other:
            other.recover()
            assert len(journals(tmp_path)) == 2  # both alive, both journals kept
            assert other.spend() == 0  # not flushed by its owner yet
        assert writer.spend() == 5


def test_readonly_ledger(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        ledger.record(model="gpt-4o", cost_micros=3)
    with Ledger(tmp_path, readonly=True) as reader:
        assert reader.spend() == 3
        with pytest.raises(ValueError, match="read-only"):
            reader.record(model="gpt-4o", cost_micros=1)
    with pytest.raises(FileNotFoundError):
        Ledger(tmp_path / "nowhere", readonly=True)


def test_closed_ledger_rejects_records(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        ledger.record(model="gpt-4o", cost_micros=1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: forking with threads
def test_forked_child_gets_its_own_journal(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        ledger.record(model="gpt-4o", cost_micros=1, tenant="parent")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                ledger.record(model="gpt-4o", cost_micros=2, tenant="child")
                ledger.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        ledger.record(model="gpt-4o", cost_micros=4, tenant="parent")
        assert ledger.spend() == 7


# ------------------------------------------------------------------ nothing can poison it


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cost_micros": 2**63}, "cost_micros"),
        ({"cost_micros": 10**12 + 1}, "cost_micros"),
        ({"input_tokens": 2**63}, "input_tokens"),
        ({"time": 1e14}, "time"),
        ({"time": -1e14}, "time"),
        ({"latency_s": 1e14}, "latency_s"),
    ],
)
def test_values_the_store_cannot_hold_are_refused_at_record(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with Ledger(tmp_path) as ledger:
        with pytest.raises(ValueError, match=message):
            ledger.record(**{"model": "gpt-4o", "cost_micros": 1, **kwargs})  # type: ignore[arg-type]
        ledger.record(model="gpt-4o", cost_micros=5)
        ledger.flush()
        assert (len(ledger), ledger.spend()) == (1, 5)
    with Ledger(tmp_path) as reopened:
        assert len(reopened) == 1


def test_intact_frames_that_are_not_records_are_quarantined_not_fatal(tmp_path: Path) -> None:
    import json

    Ledger(tmp_path).close()
    bad_payloads = [
        b"{not json",
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting
        json.dumps(["short", 1]).encode(),  # wrong number of columns
        raw_row("huge", 0).replace(b',0,null,"ok"', b',%d,null,"ok"' % 2**70),  # cost too big
        b"\xff\xfe",
    ]
    write_raw_journal(
        tmp_path,
        "journal-999999-1-dead.log",
        [encode_frame(raw_row("r0", 10)), *map(encode_frame, bad_payloads), encode_frame(raw_row("r1", 20))],
    )
    with Ledger(tmp_path) as ledger:
        assert sorted(r.id for r in ledger.records()) == ["r0", "r1"]
        assert ledger.spend() == 30
        stats = ledger.last_replay
        assert (stats.frames, stats.corrupt_frames) == (2, len(bad_payloads))
        assert ledger.quarantine.count == len(bad_payloads)
    lines = (tmp_path / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == len(bad_payloads)
    assert all(json.loads(line)["source"] == "journal-999999-1-dead.log" for line in lines)
    assert journals(tmp_path) == []
    assert oct((tmp_path / "quarantine.jsonl").stat().st_mode & 0o777) == "0o600"


def test_a_damaged_newline_loses_only_nothing(tmp_path: Path) -> None:
    Ledger(tmp_path).close()
    frames = [bytearray(encode_frame(raw_row(f"r{i}", 1))) for i in range(3)]
    frames[1][-1] = ord("x")  # the newline that ends r1 is flipped
    write_raw_journal(tmp_path, "journal-999999-2-dead.log", [bytes(f) for f in frames])
    with Ledger(tmp_path) as ledger:
        assert sorted(r.id for r in ledger.records()) == ["r0", "r1", "r2"]


def test_a_row_sqlite_refuses_is_quarantined_and_the_flusher_goes_on(tmp_path: Path) -> None:
    from llmthrottle.ledger import store

    with Ledger(tmp_path, flush_interval=1000.0) as ledger:
        ledger.record(model="gpt-4o", cost_micros=1, id="before")
        # A row past record()'s checks (as a newer writer or a damaged queue could hand over).
        row = list(ledger._pending[0][0])
        row[0], row[store.COLUMNS.index("cost_micros")] = "poison", 2**64
        ledger._pending.append((tuple(row), *ledger._pending[0][1:]))
        ledger.record(model="gpt-4o", cost_micros=2, id="after")
        ledger.flush()
        assert sorted(r.id for r in ledger.records()) == ["after", "before"]
        assert ledger.quarantine.count == 1
    assert "OverflowError" in (tmp_path / "quarantine.jsonl").read_text()


def test_every_ledger_file_is_private(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l") as ledger:
        ledger.record(model="gpt-4o", cost_micros=1)
        ledger.flush()
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "l").iterdir()}
    assert {"ledger.sqlite3", "ledger.sqlite3-wal"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


def test_group_access_shares_every_ledger_file_with_the_group_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        with Ledger(tmp_path / "l", group_access=True) as ledger:
            ledger.record(model="gpt-4o", cost_micros=1)
            ledger.quarantine.add("test", "a reason", b"payload")
            ledger.flush()
            modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "l").iterdir()}
            journals = [name for name in modes if name.endswith(".log")]
        assert {"ledger.sqlite3", "ledger.sqlite3-wal", "quarantine.jsonl"} <= set(modes) and journals
        assert set(modes.values()) == {0o660}, modes
        assert (tmp_path / "l").stat().st_mode & 0o777 == 0o770
    finally:
        os.umask(old)
    from llmthrottle import ConfigError
    from llmthrottle.sidecar.config import parse_config

    assert parse_config("[ledger]\ngroup_access = true\n").ledger_group_access is True
    with pytest.raises(ConfigError, match="group_access: must be true or false"):
        parse_config('[ledger]\ngroup_access = "yes"\n')


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b), min_size=1, max_size=8),
    victim=st.integers(0, 7),
    offset=st.integers(0, 200),
    byte=st.integers(0, 255),
)
def test_damage_to_one_journal_frame_never_loses_another(
    payloads: list[bytes], victim: int, offset: int, byte: int
) -> None:
    from llmthrottle.ledger.journal import ReplayStats, iter_frames

    frames = [bytearray(encode_frame(p)) for p in payloads]
    victim %= len(frames)
    frames[victim][offset % len(frames[victim])] = byte
    data = b"".join(bytes(f) for f in frames)
    read = [payload for payload, _ in iter_frames(data, 0, ReplayStats())]
    others = [p for i, p in enumerate(payloads) if i != victim]
    # Every undamaged frame is read, in order (the damaged one may or may not be).
    it = iter(read)
    assert all(any(p == q for q in it) for p in others), (payloads, victim, read)
