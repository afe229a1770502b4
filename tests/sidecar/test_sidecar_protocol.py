"""The binary protocol: framing (unit), then requests, pipelining and batches on a real server."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sidecar_helpers import RawClient, ServerProcess, unique

from llmthrottle.sidecar.protocol import ERROR, OK, FrameDecoder, FrameError, Op, decode_payload, encode_frame


@given(st.lists(st.lists(st.integers(-(2**63), 2**64 - 1), max_size=5), min_size=1, max_size=8), st.data())
def test_decoder_reassembles_frames_split_anywhere(messages: list[list[int]], data: st.DataObject) -> None:
    stream = b"".join(encode_frame([m]) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    payloads = []
    start = 0
    for cut in [*cuts, len(stream)]:
        payloads.extend(decoder.feed(stream[start:cut]))
        start = cut
    assert [decode_payload(p) for p in payloads] == [[m] for m in messages]
    assert decoder.buffered == 0


def test_decoder_refuses_oversized_frame_before_buffering_it() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    with pytest.raises(FrameError, match="exceeds the limit"):
        decoder.feed(struct.pack(">I", 1025))


def test_decode_payload_rejects_garbage() -> None:
    with pytest.raises(FrameError):
        decode_payload(b"\xc1")  # a reserved msgpack byte
    with pytest.raises(FrameError):
        decode_payload(msgpack.packb([1]) + b"extra")


def test_acquire_commit_round_trip(sidecar_server: ServerProcess) -> None:
    client = RawClient(sidecar_server.socket)
    try:
        request_id, status, result = client.call([7, Op.ACQUIRE, "default", unique(), {"tokens": 10}, 0.0])
        assert (request_id, status) == (7, OK)
        allowed, retry_after, delay, reset_after, limited_by, limited_key, remaining, reservation_id, reserved = result
        assert allowed and retry_after == 0.0 and limited_by is None
        assert reserved == {"requests": 1, "tokens": 10, "concurrency": 1}
        assert client.call([8, Op.COMMIT, reservation_id, {"tokens": 5}]) == [8, OK, None]
        request_id, status, (kind, message) = client.call([9, Op.COMMIT, reservation_id, {}])
        assert (request_id, status, kind) == (9, ERROR, "UnknownReservation")
        assert "already settled" in message
    finally:
        client.close()


def test_pipelined_frames_are_answered_by_id(sidecar_server: ServerProcess) -> None:
    client = RawClient(sidecar_server.socket)
    try:
        key = unique()
        # 50 frames in flight before reading anything.
        client.send_raw(b"".join(encode_frame([[i, Op.PEEK, "default", key, {}]]) for i in range(50)))
        answered = [client.read_frame() for _ in range(50)]
        assert [frame[0][0] for frame in answered] == list(range(50))
        assert all(frame[0][1] == OK for frame in answered)
    finally:
        client.close()


def test_a_batch_frame_gets_one_answer_frame_in_order(sidecar_server: ServerProcess) -> None:
    client = RawClient(sidecar_server.socket)
    try:
        key = unique()
        client.send([[i, Op.ACQUIRE, "tight", key, {}, 0.0] for i in range(7)])
        answers = client.read_frame()
        assert [a[0] for a in answers] == list(range(7))
        allowed = [a[2][0] for a in answers]
        # "tight" allows 5 requests per hour and 2 in flight: the batch is decided in order.
        assert allowed == [True, True, False, False, False, False, False]
        assert answers[2][2][4] == "concurrency"
        for answer in answers[:2]:
            assert client.call([99, Op.CANCEL, answer[2][7]]) == [99, OK, None]
    finally:
        client.close()


def test_errors_keep_the_connection_open(sidecar_server: ServerProcess) -> None:
    client = RawClient(sidecar_server.socket)
    try:
        assert client.call([1, 99])[1:] == [ERROR, ["BadRequest", "unknown op 99"]]
        assert client.call([2, Op.ACQUIRE, "default"])[2][0] == "BadRequest"  # too few arguments
        assert client.call([3, Op.ACQUIRE, "nope", "k", {}, 0.0])[2][0] == "UnknownNamespace"
        assert client.call([4, Op.ACQUIRE, "default", 5, {}, 0.0])[2][0] == "InvalidType"
        assert client.call([5, Op.ACQUIRE, "default", "k", [], 0.0])[2][0] == "BadRequest"
        assert client.call([6, Op.ACQUIRE, "default", "k", {"tokens": "many"}, 0.0])[2][0] == "InvalidType"
        assert client.call([7, Op.ACQUIRE, "default", "", {}, 0.0])[2][0] == "InvalidInput"
        assert client.call([8, Op.ACQUIRE, "default", "k", {"tokens": -1}, 0.0])[2][0] == "InvalidInput"
        assert client.call([9, Op.ACQUIRE, "default", "k", {}, "soon"])[2][0] == "TypeError"
        assert client.call([10, Op.COMMIT, "not-an-id", {}])[2][0] == "UnknownReservation"
        assert client.call(["x", "y"])[1:3] == [
            ERROR,
            ["BadRequest", "a request is [request_id, op, *args] with an integer op"],
        ]
        assert client.call([11, Op.PING]) == [11, OK, None]
    finally:
        client.close()


def test_hello_status_and_register(sidecar_server: ServerProcess) -> None:
    client = RawClient(sidecar_server.socket)
    try:
        hello = client.call([1, Op.HELLO, {"pid": 1, "client": "test"}])[2]
        assert hello["server"] == "llmthrottle"
        namespace = unique("ns")
        registered = client.call([2, Op.REGISTER, namespace, {"tokens": "10/h"}, None])[2]
        assert registered == {
            "rules": {"*": {"tokens": "10/h"}},
            "dimensions": ["tokens"],
            "budgets": [],
            "source": "client",
        }
        status = client.call([3, Op.STATUS, namespace, "k"])[2]
        assert status[0][:4] == ["tokens", "rate", 10, 0]
    finally:
        client.close()


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_binary_requests_are_counted_in_the_metrics(sidecar_server: ServerProcess) -> None:
    """Decisions, denials, errors and the per-op latency histogram count binary requests."""
    decisions = 'llmthrottle_decisions_total{namespace="tight",outcome="%s"}'
    denials = 'llmthrottle_denials_total{namespace="tight",limited_by="concurrency"}'
    latency = 'llmthrottle_request_seconds_count{protocol="binary",op="acquire"}'
    errors = 'llmthrottle_request_errors_total{protocol="binary",kind="BadRequest"}'
    before = sidecar_server.http("GET", "/metrics")[2]
    client = RawClient(sidecar_server.socket)
    key = unique()
    try:
        # Namespace "tight" holds 2 concurrent calls per key: 2 admitted, then 1 denied.
        answers = [client.call([i, Op.ACQUIRE, "tight", key, {"tokens": 1}, 0.0]) for i in range(3)]
        assert [answer[2][0] for answer in answers] == [True, True, False]
        assert client.call([9, 99])[1] == ERROR  # unknown op
        for answer in answers[:2]:
            assert client.call([10, Op.CANCEL, answer[2][7]])[1] == OK
    finally:
        client.close()
    after = sidecar_server.http("GET", "/metrics")[2]
    assert _metric(after, decisions % "allowed") - _metric(before, decisions % "allowed") == 2
    assert _metric(after, decisions % "denied") - _metric(before, decisions % "denied") == 1
    assert _metric(after, denials) - _metric(before, denials) == 1
    assert _metric(after, latency) - _metric(before, latency) == 3
    assert _metric(after, errors) - _metric(before, errors) == 1
