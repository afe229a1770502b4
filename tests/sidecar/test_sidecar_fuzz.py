"""Property tests of both sidecar protocols against a real server: whatever a client sends, the
answer is a well-formed answer or a closed connection, never an internal error, and the server
keeps serving everyone else. `scripts/fuzz-sidecar` runs the same properties for longer
(`FUZZ_EXAMPLES`)."""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sidecar_helpers import RawClient, ServerProcess, still_serving

from llmthrottle.sidecar.errors import ERRORS
from llmthrottle.sidecar.protocol import ERROR, MAGIC, OK, FrameDecoder, FrameError, Op

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
ops = st.sampled_from(
    [int(op) for op in (Op.ACQUIRE, Op.COMMIT, Op.CANCEL, Op.STATUS, Op.REGISTER, Op.PEEK, Op.PING)]
) | st.integers(-5, 300)
requests = st.builds(
    lambda rid, op, args: [rid, op, *args], st.integers(0, 2**31) | values, ops, st.lists(values, max_size=5)
)


@FUZZ
@given(chunks=st.lists(st.binary(max_size=64), max_size=20), limit=st.integers(1, 1 << 16))
def test_the_frame_decoder_takes_any_bytes(chunks: list[bytes], limit: int) -> None:
    decoder = FrameDecoder(limit)
    try:
        for chunk in chunks:
            for payload in decoder.feed(chunk):
                assert len(payload) <= limit
    except FrameError:
        pass  # the one refusal it may give: the connection is then closed


@FUZZ
@given(batch=st.lists(requests, min_size=1, max_size=4))
def test_any_binary_request_gets_an_answer_and_no_internal_error(
    sidecar_server: ServerProcess, batch: list[list[Any]]
) -> None:
    client = RawClient(sidecar_server.socket)
    try:
        try:
            client.send(batch)
            answers = client.read_frame()
        except (EOFError, OSError):
            answers = None  # closed by the server: allowed for a malformed stream
        if answers is not None:
            assert len(answers) in (1, len(batch))
            for answer in answers:
                assert answer[1] in (OK, ERROR)
                if answer[1] == ERROR:
                    assert answer[2][0] in ERRORS and answer[2][0] != "InternalError", answer
    finally:
        client.close()
    still_serving(sidecar_server)


@FUZZ
@given(payload=st.binary(max_size=200))
def test_any_frame_payload_is_answered_or_closed(sidecar_server: ServerProcess, payload: bytes) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect(sidecar_server.socket)
        sock.sendall(MAGIC + struct.pack(">I", len(payload)) + payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    finally:
        sock.close()
    decoder = FrameDecoder()
    for answer_payload in decoder.feed(received):
        for answer in msgpack.unpackb(answer_payload, strict_map_key=False):
            if answer[1] == ERROR:
                assert answer[2][0] != "InternalError", answer
    still_serving(sidecar_server)


@FUZZ
@given(path=st.sampled_from(["/v1/acquire", "/v1/peek", "/v1/commit", "/v1/cancel", "/v1/register"]), body=json_values)
def test_any_json_body_is_answered_without_a_server_error(sidecar_server: ServerProcess, path: str, body: Any) -> None:
    from sidecar_helpers import http_request

    status, _, answer = http_request(sidecar_server.socket, "POST", path, raw=json.dumps(body).encode())
    assert status < 500 or status == 503, (status, answer)
    if status >= 400:
        assert answer["error"] in ERRORS
