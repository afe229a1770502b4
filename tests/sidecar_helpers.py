"""Helpers for the sidecar tests: start a real `llmthrottle serve` subprocess on a temporary
socket, talk HTTP and the raw binary protocol to it.

Fixtures live here rather than in conftest.py (shared with other test suites); a test module
imports the ones it uses: `from sidecar_helpers import sidecar_server`.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import msgpack

from llmthrottle.sidecar.protocol import MAGIC, OK, FrameDecoder, Op, decode_payload, encode_frame

STARTUP_TIMEOUT_S = 30.0


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.unix_path)  # blocking: waits while the listen backlog is full
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.timeout)
        self.sock = sock


def http_request(
    path: str, method: str, url: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, decoded JSON or text) of one HTTP request on the socket at `path`."""
    connection = UnixHTTPConnection(path)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection.request(method, url, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        content_type = response.getheader("Content-Type", "")
        decoded = json.loads(payload) if "json" in content_type else payload.decode()
        return response.status, dict(response.getheaders()), decoded
    finally:
        connection.close()


class RawClient:
    """The binary protocol by hand: for protocol and bad-input tests."""

    def __init__(self, path: str, *, magic: bool = True, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)  # blocking: waits while the listen backlog is full
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(timeout)
        self.decoder = FrameDecoder(1 << 24)
        self.frames: list[bytes] = []
        if magic:
            self.sock.sendall(MAGIC)

    def send(self, requests: list[list[Any]]) -> None:
        self.sock.sendall(encode_frame(requests))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> list[list[Any]]:
        """The next response frame; raises EOFError when the server closed the connection."""
        while not self.frames:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("server closed the connection")
            self.frames.extend(self.decoder.feed(data))
        return decode_payload(self.frames.pop(0))  # type: ignore[no-any-return]

    def call(self, request: list[Any]) -> list[Any]:
        self.send([request])
        return self.read_frame()[0]

    def closed_by_server(self) -> bool:
        """True when the server has closed (reads EOF, after any pending answers)."""
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


class ServerProcess:
    """A running `python -m llmthrottle.sidecar` subprocess."""

    def __init__(
        self, directory: str, config: str | None = None, args: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        self.directory = directory
        self.socket = os.path.join(directory, "lt.sock")
        self.config_path = os.path.join(directory, "llmthrottle.toml") if config is not None else None
        if config is not None:
            self.write_config(config)
        command = [sys.executable, "-m", "llmthrottle.sidecar", "--socket", self.socket, *args]
        if self.config_path:
            command += ["--config", self.config_path]
        self.log_path = os.path.join(directory, "server.log")
        self._log = open(self.log_path, "wb")
        # The embedded default keeps a ledger under $XDG_STATE_HOME: this test's directory.
        self.proc = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "XDG_STATE_HOME": directory, **(env or {})},
        )
        self.wait_healthy()

    def write_config(self, text: str) -> None:
        assert self.config_path is not None
        with open(self.config_path, "w") as file:
            file.write(text)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _, _ = http_request(self.socket, "GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not healthy within {STARTUP_TIMEOUT_S}s:\n{self.log()}")

    def http(self, method: str, url: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        return http_request(self.socket, method, url, body)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as file:
            return file.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        # The default shared-memory table of this socket outlives the server: remove it.
        from llmthrottle import SharedState
        from llmthrottle.sidecar.config import default_state_name

        SharedState.remove(default_state_name(self.socket))
        return self.proc.returncode


def still_serving(server: ServerProcess) -> None:
    """Asserts the server still answers both protocols and has not exited."""
    client = RawClient(server.socket)
    try:
        assert client.call([1, Op.PING]) == [1, OK, None]
    finally:
        client.close()
    assert server.http("GET", "/health")[0] == 200
    assert server.proc.poll() is None


def start_server(
    directory: str, config: str | None = None, args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> ServerProcess:
    return ServerProcess(directory, config, args, env)


# Limits most tests use: a namespace the server knows from its file.
TEST_CONFIG = """
[limits."*"]
requests = "600/min"
tokens = "1M/min"
concurrency = 64

[namespaces.tight.limits."*"]
requests = "5/h"
tokens = "1000/h"
concurrency = 2
"""


def unique(prefix: str = "k") -> str:
    """A key no other test uses (tests share one server per module)."""
    unique.counter += 1  # type: ignore[attr-defined]
    return f"{prefix}:{os.getpid()}:{unique.counter}"  # type: ignore[attr-defined]


unique.counter = 0  # type: ignore[attr-defined]

__all__ = [
    "RawClient",
    "ServerProcess",
    "TEST_CONFIG",
    "http_request",
    "start_server",
    "unique",
    "msgpack",
]
