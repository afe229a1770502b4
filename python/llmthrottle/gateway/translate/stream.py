"""A stream of one API family in the other's events, translated as it arrives: each translator
is fed the upstream's bytes (any split) and returns the caller's, event for event.

Anthropic → OpenAI: `message_start` opens with the assistant role; text and tool-input deltas
become `chat.completion.chunk` deltas (a `tool_use` block is a tool call, numbered in order);
`message_delta` carries the finish reason; `message_stop` ends with the usage chunk (when the
caller asked for `stream_options.include_usage`) and `[DONE]`.

OpenAI → Anthropic: the first chunk opens the message; text deltas fill a text block, each new
tool call opens a `tool_use` block fed `input_json_delta`s; at `[DONE]` the open block is closed
and `message_delta` carries the stop reason and the usage (OpenAI reports it only at the end, so
`message_start`'s counts are zeros), then `message_stop`.

An upstream error event is passed on as the caller's API writes one mid-stream.
"""

from __future__ import annotations

import time
from typing import Any

from ..._json import loads
from ...providers.protocol import EventSplitter, event_data
from .common import Untranslatable, dumps, items, member
from .reply import anthropic_usage, finish_reason, openai_usage, stop_reason

__all__ = ["AnthropicToOpenAIStream", "OpenAIToAnthropicStream", "StreamTranslator"]


class StreamTranslator:
    """Splits the upstream's bytes into server-sent events and translates each one."""

    def __init__(self) -> None:
        self._events = EventSplitter()

    def feed(self, chunk: bytes) -> bytes:
        """The caller's bytes for this piece of the upstream's stream."""
        return b"".join(self._parse(event) for event in self._events.feed(chunk))

    def finish(self) -> bytes:
        """The end of the upstream's stream: what is still held back."""
        rest = self._events.rest()
        return self._parse(rest) if rest.strip() else b""

    def _parse(self, event: bytes) -> bytes:
        data = event_data(event)
        if not data:
            return b""
        if data == b"[DONE]":
            return self._done()
        try:
            decoded = loads(data)
        except (ValueError, RecursionError):
            return b""
        return self._translate(decoded) if isinstance(decoded, dict) else b""

    def _translate(self, event: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _done(self) -> bytes:
        return b""


class AnthropicToOpenAIStream(StreamTranslator):
    """Anthropic Messages events → OpenAI chat completion chunks."""

    def __init__(self, include_usage: bool) -> None:
        super().__init__()
        self.include_usage = include_usage
        self.id, self.model, self.created = "", "", int(time.time())
        self.usage: dict[str, Any] = {}
        self._tool_calls: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return b"data: " + dumps(chunk).encode() + b"\n\n"

    def _translate(self, event: dict[str, Any]) -> bytes:
        kind = event.get("type")
        if kind == "message_start":
            message = member(event, "message")
            self.id, self.model = str(message.get("id", "")), str(message.get("model", ""))
            if isinstance(message.get("usage"), dict):
                self.usage = dict(message["usage"])
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = member(event, "content_block")
            if block.get("type") == "tool_use":
                number = self._tool_calls[_index(event)] = len(self._tool_calls)
                call = {"index": number, "id": block.get("id"), "type": "function"}
                return self._chunk({"tool_calls": [{**call, "function": {"name": block.get("name"), "arguments": ""}}]})
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            return b""
        if kind == "content_block_delta":
            delta = member(event, "delta")
            if delta.get("type") == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            call_number = self._tool_calls.get(_index(event))
            if delta.get("type") == "input_json_delta" and call_number is not None:
                arguments = delta.get("partial_json", "")
                return self._chunk({"tool_calls": [{"index": call_number, "function": {"arguments": arguments}}]})
            return b""  # thinking, signatures, citations: nothing in a chat completion
        if kind == "message_delta":
            if isinstance(event.get("usage"), dict):
                self.usage.update(event["usage"])
            stop = member(event, "delta").get("stop_reason")
            return self._chunk({}, finish_reason(stop) or "stop") if stop is not None else b""
        if kind == "message_stop":
            return self._usage_chunk() + b"data: [DONE]\n\n"
        if kind == "error":
            error = member(event, "error")
            body = {
                "error": {"message": error.get("message", "upstream error"), "type": error.get("type"), "code": None}
            }
            return b"data: " + dumps(body).encode() + b"\n\n"
        return b""  # ping

    def _usage_chunk(self) -> bytes:
        if not self.include_usage:
            return b""
        try:
            usage = openai_usage(self.usage)
        except Untranslatable:
            return b""
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }
        return b"data: " + dumps(chunk).encode() + b"\n\n"


class OpenAIToAnthropicStream(StreamTranslator):
    """OpenAI chat completion chunks → Anthropic Messages events."""

    def __init__(self) -> None:
        super().__init__()
        self.started = False
        self.usage: dict[str, Any] | None = None
        self.stop: str | None = None
        self._blocks = 0  # Anthropic content blocks opened so far
        self._open: int | None = None  # the index of the open block
        self._open_is_text = False
        self._pending = b""  # events made while translating one chunk
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool call index -> Anthropic block index

    @staticmethod
    def _emit(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {dumps({'type': name, **data})}\n\n".encode()

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": chunk.get("id"),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return self._emit("message_start", {"message": message})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        return self._emit("content_block_stop", {"index": index})

    def _open_block(self, block: dict[str, Any]) -> int:
        """Closes the open block, opens `block`; returns its index (the bytes go to `_pending`)."""
        self._pending += self._close()
        index = self._open = self._blocks
        self._open_is_text = block["type"] == "text"
        self._blocks += 1
        self._pending += self._emit("content_block_start", {"index": index, "content_block": block})
        return index

    def _translate(self, chunk: dict[str, Any]) -> bytes:
        if isinstance(chunk.get("error"), dict):
            error = chunk["error"]
            body = {"type": "api_error", "message": str(error.get("message", "upstream error"))}
            return self._emit("error", {"error": body})
        out = b"" if self.started else self._start(chunk)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in items(chunk.get("choices")):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = member(choice, "delta")
            for text in (delta.get("content"), delta.get("refusal")):
                if isinstance(text, str) and text:
                    index = (
                        self._open
                        if self._open is not None and self._open_is_text
                        else self._open_block({"type": "text", "text": ""})
                    )
                    self._delta(index, {"type": "text_delta", "text": text})
            for call in items(delta.get("tool_calls")):
                self._tool_delta(call)
            if choice.get("finish_reason") is not None:
                self.stop = stop_reason(choice["finish_reason"])
        out, self._pending = out + self._pending, b""
        return out

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        self._pending += self._emit("content_block_delta", {"index": index, "delta": delta})

    def _tool_delta(self, call: Any) -> None:
        if not isinstance(call, dict):
            return
        key = _index(call, 0)
        function = member(call, "function")
        index = self._tool_blocks.get(key)
        if index is None:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": {},
            }
            index = self._tool_blocks[key] = self._open_block(block)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._delta(index, {"type": "input_json_delta", "partial_json": arguments})

    def _done(self) -> bytes:
        if not self.started:
            return b""
        try:
            usage = anthropic_usage(self.usage) if self.usage is not None else {"output_tokens": 0}
        except Untranslatable:
            usage = {"output_tokens": 0}
        delta = {"stop_reason": self.stop or "end_turn", "stop_sequence": None}
        return (
            self._close()
            + self._emit("message_delta", {"delta": delta, "usage": usage})
            + self._emit("message_stop", {})
        )


def _index(event: dict[str, Any], default: int = -1) -> int:
    """The block or tool call an event is about (`default` when it names none)."""
    index = event.get("index", default)
    return index if isinstance(index, int) else default
