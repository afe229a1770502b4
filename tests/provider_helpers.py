"""What the provider-layer tests share beside their fixtures (in conftest.py)."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MINI = "gpt-4o-mini"
SONNET = "claude-sonnet-4-5"


def records(ledger: Any) -> list[Any]:
    ledger.flush()
    return list(ledger.records())


# An Anthropic output limit of 2,000 a minute, as a reply announces it.
OUTPUT_LIMIT_2000 = {
    "anthropic-ratelimit-output-tokens-limit": "2000",
    "anthropic-ratelimit-output-tokens-remaining": "2000",
    "anthropic-ratelimit-output-tokens-reset": "2099-01-01T00:00:00Z",
}


def learned_output_after(server: Any, calls: int = 2, max_tokens: int = 500) -> Any:
    """The output limit `lt.wrap(anthropic.Anthropic())` learned after `calls` calls to `server`."""
    import anthropic

    import llmthrottle as lt

    with lt.wrap(anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="k")) as client:
        for _ in range(calls):
            client.messages.create(model=SONNET, messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens)
        learned = client._client._transport.settings.learned
    [(key, known)] = learned._learned.items()
    [output] = [s for s in known.limiter.status(key) if s.dimension == "output_tokens"]
    return output


CHAT_REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": MINI,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}
MESSAGE_REPLY = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": SONNET,
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 11, "output_tokens": 7},
}


class CannedServer(http.server.ThreadingHTTPServer):
    """A provider on loopback that answers every POST with `reply` (a JSON object, or bytes sent
    as they are, as `content_type`; gzip-compressed when `compress` and asked for; cut off after
    `cut_after` bytes of a longer announced body when set), and keeps each request's
    accept-encoding (one entry per request)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply: dict[str, Any] | bytes = CHAT_REPLY
        self.compress = False
        self.cut_after: int | None = None
        self.content_type = "application/json"
        self.encodings: list[str | None] = []
        self.headers: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url


class _Handler(http.server.BaseHTTPRequestHandler):
    server: CannedServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        asked = self.headers.get("accept-encoding")
        self.server.encodings.append(asked)
        reply = self.server.reply
        body = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", self.server.content_type)
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        if self.server.compress and "gzip" in (asked or ""):
            body = gzip.compress(body)
            self.send_header("content-encoding", "gzip")
        cut = self.server.cut_after
        self.send_header("content-length", str(len(body)))
        if cut is not None:
            self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def canned_server() -> Iterator[CannedServer]:
    canned = CannedServer()
    thread = threading.Thread(target=canned.serve_forever, daemon=True)
    thread.start()
    try:
        yield canned
    finally:
        canned.shutdown()
        canned.server_close()
