"""Hostile and broken clients: each is answered with an error or closed, and the server keeps
serving everyone else."""

from __future__ import annotations

import os
import resource
import socket
import struct
import tempfile
from collections.abc import Iterator

import msgpack
import pytest
from sidecar_helpers import RawClient, ServerProcess, start_server, still_serving

from llmthrottle.sidecar.protocol import ERROR, MAGIC, Op, encode_frame


def test_garbage_bytes_get_an_http_error(sidecar_server: ServerProcess) -> None:
    client = RawClient(sidecar_server.socket, magic=False)
    try:
        client.send_raw(os.urandom(4096).replace(b"L", b"x"))
        data = client.sock.recv(65536)
        assert data.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")) or data == b""
        assert client.closed_by_server()
    finally:
        client.close()
    still_serving(sidecar_server)


def test_garbage_after_the_magic_closes_with_an_error_frame(sidecar_server: ServerProcess) -> None:
    client = RawClient(sidecar_server.socket)
    try:
        client.send_raw(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        answer = client.read_frame()
        assert answer[0][:2] == [None, ERROR] and answer[0][2][0] == "BadRequest"
        assert client.closed_by_server()
    finally:
        client.close()
    still_serving(sidecar_server)


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.packb(5),
        msgpack.packb([]),
        msgpack.packb({"a": 1}),
        msgpack.packb([1, 2, 3]),
    ],
)
def test_wrong_shapes(sidecar_server: ServerProcess, payload: bytes) -> None:
    client = RawClient(sidecar_server.socket)
    try:
        client.send_raw(struct.pack(">I", len(payload)) + payload)
        answer = client.read_frame()
        assert answer[0][1] == ERROR and answer[0][2][0] == "BadRequest"
    finally:
        client.close()
    still_serving(sidecar_server)


def test_oversized_frame_is_refused_before_it_is_read(sidecar_server: ServerProcess) -> None:
    client = RawClient(sidecar_server.socket)
    try:
        client.send_raw(struct.pack(">I", 1 << 30))  # announces 1 GiB, sends nothing more
        answer = client.read_frame()
        assert "exceeds the limit" in answer[0][2][1]
        assert client.closed_by_server()
    finally:
        client.close()
    still_serving(sidecar_server)


def test_oversized_http_body_is_refused(sidecar_server: ServerProcess) -> None:
    from sidecar_helpers import http_request

    status, _, _ = http_request(sidecar_server.socket, "POST", "/v1/acquire", raw=b"x" * (2 << 20))
    assert status == 413
    still_serving(sidecar_server)


def test_truncated_frames_and_disconnects_mid_request(sidecar_server: ServerProcess) -> None:
    frame = encode_frame([[1, Op.ACQUIRE, "default", "k", {}, 0.0]])
    for cut in (1, 3, 4, len(MAGIC) + 2, len(frame) - 1):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(sidecar_server.socket)
            sock.sendall((MAGIC + frame)[:cut])
        finally:
            sock.close()  # gone mid-request
    # A client that sends a request and leaves before reading the answer.
    for _ in range(20):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(sidecar_server.socket)
            sock.sendall(MAGIC + frame * 50)
        finally:
            sock.close()
    still_serving(sidecar_server)


def test_a_magic_prefix_that_turns_out_to_be_http(sidecar_server: ServerProcess) -> None:
    client = RawClient(sidecar_server.socket, magic=False)
    try:
        client.send_raw(b"LTM")  # looks like the magic so far...
        client.send_raw(b"X / HTTP/1.1\r\nHost: x\r\n\r\n")  # ...but is not
        assert client.sock.recv(65536).startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
    finally:
        client.close()
    still_serving(sidecar_server)


@pytest.fixture
def idle_server() -> Iterator[ServerProcess]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 30_000) if hard != resource.RLIM_INFINITY else 30_000
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by the server
    with tempfile.TemporaryDirectory(prefix="lt-idle-") as directory:
        server = start_server(directory, "[server]\nidle_timeout = 1\nmax_connections = 20000\n")
        try:
            yield server
        finally:
            server.stop()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_many_idle_connections_are_closed_and_others_still_served(idle_server: ServerProcess) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = min(10_000, soft - 200)
    if count < 1000:
        pytest.skip(f"RLIMIT_NOFILE {soft} is too low to hold many connections")
    sockets = []
    try:
        for i in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.connect(idle_server.socket)
            if i % 2:
                sock.sendall(MAGIC)  # half are binary connections, half never say anything
        still_serving(idle_server)
        # Every idle connection is closed by the server after idle_timeout.
        for sock in sockets:
            sock.settimeout(60)
            assert sock.recv(1) == b""
        still_serving(idle_server)
    finally:
        for sock in sockets:
            sock.close()


def test_deeply_nested_json_is_a_bad_request(sidecar_server: ServerProcess) -> None:
    from sidecar_helpers import http_request

    body = b'{"key": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    status, _, answer = http_request(sidecar_server.socket, "POST", "/v1/acquire", raw=body)
    assert (status, answer["error"]) == (400, "BadRequest")
    assert "nested" in answer["message"]
    still_serving(sidecar_server)


def test_abuse_without_any_access_adds_at_most_a_summary_line_to_the_log() -> None:
    with tempfile.TemporaryDirectory(prefix="lt-quiet-") as directory:
        server = start_server(directory, "")
        try:
            before = len(server.log().splitlines())
            for _ in range(200):
                # A body promised and never sent in full: the peer leaves mid-body.
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(server.socket)
                sock.sendall(b'POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"ke')
                sock.close()
                # A malformed binary frame.
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(server.socket)
                sock.sendall(MAGIC + struct.pack(">I", 3) + b"\xc1\xc1\xc1")
                sock.close()
            still_serving(server)
            added = server.log().splitlines()[before:]
        finally:
            server.stop()
    assert len(added) <= 2, added
    assert not any("Traceback" in line or "ERROR" in line for line in added), added
