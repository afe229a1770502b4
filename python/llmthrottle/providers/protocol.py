"""What llmthrottle knows of each provider's HTTP API: which requests are LLM calls, which
failures are worth retrying, and where the usage is in a reply or a stream. Pure functions and
a byte-fed reader, so the sync and async transports share every rule."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from .. import _native
from .._json import loads

__all__ = [
    "AZURE_HOSTS",
    "Endpoint",
    "EventSplitter",
    "base_path",
    "UsageReader",
    "endpoint_of",
    "error_body",
    "event_data",
    "failure_kind",
    "whole_usage",
]

Family = Literal["openai", "anthropic"]
Provider = Literal["openai", "azure", "anthropic"]
Kind = Literal["chat", "responses", "embeddings", "messages"]


@dataclass(frozen=True)
class Endpoint:
    """An LLM endpoint: the provider family (whose request and usage shapes it speaks) and the
    kind of call. `azure_deployment` is set for Azure OpenAI, which speaks OpenAI's shapes: the
    deployment the path names, or "" when the body's `model` names it (the `/openai/v1` API).

    `provider` is whose rate-limit headers and error bodies the answers carry.
    `counts_reserved_output` is whether the provider's token limit counts the requested max
    output, used or not (OpenAI, and Azure, which counts a request's max_tokens when it
    arrives), rather than the output produced (Anthropic). Both are read on every call: they
    are kept, not computed."""

    family: Family
    kind: Kind
    azure_deployment: str | None = None
    provider: Provider = field(init=False, repr=False, compare=False)
    counts_reserved_output: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "provider", "azure" if self.azure_deployment is not None else self.family)
        object.__setattr__(self, "counts_reserved_output", self.family == "openai")


_ENDPOINTS = (
    ("/chat/completions", Endpoint("openai", "chat")),
    ("/responses", Endpoint("openai", "responses")),
    ("/embeddings", Endpoint("openai", "embeddings")),
    ("/messages", Endpoint("anthropic", "messages")),
)

# Each kind's path, after the base path a client is given (`/v1`, a proxy's prefix).
_SUFFIX_OF = {endpoint.kind: suffix for suffix, endpoint in _ENDPOINTS}


def base_path(kind: Kind, path: str) -> str:
    """The part of a request's `path` before the own path of its endpoint's `kind` (`/v1` of
    `/v1/chat/completions`): where the client was pointed."""
    suffix = _SUFFIX_OF[kind]
    return path[: -len(suffix)] if path.endswith(suffix) else path


# Azure OpenAI's hosts (a resource's own, Azure AI Foundry's, API Management's): their
# `/openai/v1` paths are Azure's, where elsewhere (Groq, Bedrock) the same paths are OpenAI's.
AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com", ".azure-api.net")
_DEPLOYMENTS = "/openai/deployments/"


# (method, path, host) -> its endpoint: a client asks the same few, on every call. Bounded:
# paths may come from callers.
_SEEN: dict[tuple[str, str, str], Endpoint | None] = {}
_SEEN_MAX = 1024


def endpoint_of(method: str, path: str, host: str = "") -> Endpoint | None:
    """The endpoint a request is a call to, or None for anything else (listing models, files...).

    Azure OpenAI's requests are OpenAI's with the deployment in the path
    (`/openai/deployments/{deployment}/chat/completions`, `.../embeddings`), or in the body's
    `model` (`/openai/responses`, and any path on an Azure host, such as `/openai/v1/...`)."""
    asked = (method, path, host)
    try:
        return _SEEN[asked]
    except KeyError:
        pass
    if len(_SEEN) >= _SEEN_MAX:
        _SEEN.clear()
    found = _SEEN[asked] = _endpoint_of(method, path, host)
    return found


def _endpoint_of(method: str, path: str, host: str) -> Endpoint | None:
    if method != "POST":
        return None
    for suffix, endpoint in _ENDPOINTS:
        if path.endswith(suffix):
            return endpoint if endpoint.family != "openai" else _openai_or_azure(endpoint, path, suffix, host)
    return None


def _openai_or_azure(endpoint: Endpoint, path: str, suffix: str, host: str) -> Endpoint:
    at = path.find(_DEPLOYMENTS)
    if at >= 0:
        deployment = path[at + len(_DEPLOYMENTS) : len(path) - len(suffix)]
        return _azure(endpoint, deployment) if deployment and "/" not in deployment else endpoint
    # Elsewhere `/openai/v1/...` is OpenAI's own shape (Groq, Bedrock, proxies): only Azure's
    # hosts, and the path its SDK builds for the Responses API, say Azure.
    if path == "/openai/responses" or host.endswith(AZURE_HOSTS):
        return _azure(endpoint, "")
    return endpoint


def _azure(endpoint: Endpoint, deployment: str) -> Endpoint:
    return Endpoint(endpoint.family, endpoint.kind, deployment)


_OPENAI_KINDS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}
_ANTHROPIC_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}
_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


def error_body(
    provider: Provider, status: int, message: str, *, kind: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error in `provider`'s shape (what its SDK parses into its exception), the type and
    code defaulting to what the provider sends for `status`. Azure's has a code (the status
    as a string, or a name such as `DeploymentNotFound`) and a message, no type."""
    if provider == "azure":
        return {"error": {"code": code or str(status), "message": message}}
    if provider == "anthropic":
        return {
            "type": "error",
            "error": {"type": kind or _ANTHROPIC_KINDS.get(status, "api_error"), "message": message},
        }
    return {
        "error": {
            "message": message,
            "type": kind or _OPENAI_KINDS.get(status, "invalid_request_error"),
            "param": None,
            "code": code if code is not None else _OPENAI_CODES.get(status),
        }
    }


def _error_fields(body: bytes) -> tuple[str, str]:
    """(type, code) of an error body, '' when absent."""
    try:
        decoded = loads(body)
    except (ValueError, RecursionError):
        return "", ""
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if not isinstance(error, dict):
        return "", ""
    kind, code = error.get("type"), error.get("code")
    return (kind if isinstance(kind, str) else ""), (code if isinstance(code, str) else "")


def failure_kind(endpoint: Endpoint, status: int, body: bytes) -> Literal["rate_limited", "retry", "fatal"]:
    """How to treat an error answer: `rate_limited` (wait as told, then retry), `retry` (a
    transient failure: back off, then retry) or `fatal` (retrying cannot help: out of credit,
    a spend limit, a malformed or oversized request)."""
    kind, code = _error_fields(body)
    if status == 429:
        if code == "insufficient_quota" or kind == "insufficient_quota" or "spend_limit" in (kind + code):
            return "fatal"
        return "rate_limited"
    if status == 529 or status == 408 or status == 409 or status >= 500:
        return "retry"  # Anthropic's 529 is provider-wide overload, not this key's limit
    return "fatal"


def _root_usage(body: bytes) -> dict[str, Any] | None:
    """The `usage` object of a whole JSON reply, read without parsing the rest of it, or None
    when that cannot be proved right (the caller then parses the whole reply): see
    `llmthrottle_core::reply` for the proof. Parsing a reply of a few kilobytes costs more than
    the rest of the wrapper's work on the way back, and the SDK parses it again anyway."""
    span = _native.root_usage_span(body)
    if span is None:
        return None
    try:
        usage = loads(body[span[0] : span[1]])
    except (ValueError, RecursionError):
        return None
    return usage if isinstance(usage, dict) else None


def _whole_reply(body: bytes) -> dict[str, Any] | None:
    """A whole JSON reply, parsed, when it is an object with a `usage` object; else None."""
    try:
        decoded = loads(body)
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, dict) and isinstance(decoded.get("usage"), dict) else None


def whole_usage(body: bytes) -> dict[str, Any] | None:
    """The `usage` object of a whole JSON reply; None when it has none (cut off, not JSON)."""
    usage = _root_usage(body)
    if usage is not None:
        return usage
    reply = _whole_reply(body)
    return None if reply is None else cast(dict[str, Any], reply["usage"])


# A server-sent event ends with a blank line: two line ends in a row, each CRLF, LF or CR
# (proxies differ, and one stream may mix them). A CR right before an LF begins a CRLF: never a
# line end of its own. A CR that ends what has arrived so far is taken as one: were it the start
# of a CRLF, its LF begins the next event as an empty line, which every SSE reader skips, and no
# event waits for a byte that may be long in coming.
_EVENT_END = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")
# A search for the end of an event resumes this far back from where the last one stopped: the
# longest blank line ("\r\n\r\n") but its last byte.
_END_OVERLAP = 3


class EventSplitter:
    """Splits a server-sent event stream, fed in pieces of any size, into whole events. Each
    search for an event's end resumes where the last one stopped, so an event that arrives in
    many pieces costs its length once, not once per piece."""

    __slots__ = ("_buffer", "_searched")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._searched = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events `chunk` completes, each with the blank line that ends it."""
        buffer = self._buffer
        buffer += chunk
        events = []
        while (found := _EVENT_END.search(buffer, self._searched)) is not None:
            end = found.end()
            events.append(bytes(buffer[:end]))
            del buffer[:end]
            self._searched = 0
        self._searched = max(0, len(buffer) - _END_OVERLAP)
        return events

    def rest(self) -> bytes:
        """The bytes of an event that never ended (the stream did)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._searched = 0
        return rest


def event_data(event: bytes) -> bytes:
    """The data of one server-sent event (its `data:` lines' values, joined), as both providers
    write their streams: what the usage reader and the gateway's stream translation parse."""
    return b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))


# The events that end a Responses API stream, each with the usage the provider billed.
_RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed")


class UsageReader:
    """Reads the usage of a reply: a stream's as its bytes pass through (`feed`, then `finish`),
    untouched except for one thing: with `hide_usage_chunk`, an OpenAI stream's final
    usage-only chunk (added by llmthrottle, not asked for by the caller) is dropped; or a whole
    reply's, read in one piece (`take_whole`). `feed` returns the bytes to pass on."""

    __slots__ = (
        "_complete",
        "_events",
        "_model",
        "_usage",
        "_wants_model",
        "_whole_unread",
        "body",
        "endpoint",
        "failed",
        "hide_usage_chunk",
        "text_parts",
    )

    def __init__(self, endpoint: Endpoint, hide_usage_chunk: bool = False) -> None:
        self.endpoint = endpoint
        self.hide_usage_chunk = hide_usage_chunk
        self._usage: dict[str, Any] | None = None
        self._complete = False
        # The provider ended the reply as failed, billing what its usage says (the Responses
        # API's `response.failed`).
        self.failed = False
        self.text_parts: list[str] = []
        # Azure: the model the reply names (a deployment's name says nothing of its model).
        self._model: str | None = None
        self._wants_model = endpoint.azure_deployment is not None
        # A whole (non-streaming) reply's bytes, once it ended (for the response cache). They
        # are read for usage only when asked: a call nobody prices or reports never parses them.
        self.body = b""
        self._whole_unread = False
        self._events = EventSplitter()

    @property
    def usage(self) -> dict[str, Any] | None:
        """The reply's usage object as the provider wrote it (merged across an Anthropic
        stream's events); None until read."""
        if self._whole_unread:
            self._read_whole()
        return self._usage

    @property
    def complete(self) -> bool:
        """Whether the reply ended as the provider meant it to (a whole reply with its usage,
        a stream with its last event)."""
        if self._whole_unread:
            self._read_whole()
        return self._complete

    @property
    def model(self) -> str | None:
        """The model an Azure reply names, when it names one."""
        if self._whole_unread:
            self._read_whole()
        return self._model

    def feed(self, chunk: bytes) -> bytes:
        """One chunk of a stream: the bytes to pass on (whole events only; the rest is held
        back until its event ends)."""
        return b"".join(event for event in self._events.feed(chunk) if self._event(event))

    def finish(self) -> bytes:
        """The end of a stream: the bytes still held back."""
        rest = self._events.rest()
        if rest.strip():
            return rest if self._event(rest) else b""
        return rest

    def take_whole(self, body: bytes) -> None:
        """The bytes of a whole (non-streaming) reply, read in one piece: the reply has ended."""
        self.body, self._whole_unread = body, True

    def _read_whole(self) -> None:
        self._whole_unread = False
        if self._wants_model:
            reply = _whole_reply(self.body)
            if reply is not None:
                self._usage, self._complete = reply["usage"], True
                self._note_model(reply)
            return
        usage = whole_usage(self.body)
        if usage is not None:
            self._usage, self._complete = usage, True

    def _event(self, event: bytes) -> bool:
        """Reads one server-sent event; whether to pass it on."""
        data = event_data(event)
        if not data:
            return True
        if data == b"[DONE]":
            self._complete = True
            return True
        try:
            decoded = loads(data)
        except (ValueError, RecursionError):
            return True
        if not isinstance(decoded, dict):
            return True
        if self.endpoint.family == "anthropic":
            self._anthropic(decoded)
            return True
        kind = decoded.get("type")
        if isinstance(kind, str) and kind.startswith("response."):  # the Responses API's events
            response = decoded.get("response")
            if isinstance(response, dict):
                # Its last event holds the usage, however the response ended.
                if isinstance(response.get("usage"), dict):
                    self._usage = response["usage"]
                    self._complete = kind in _RESPONSE_ENDS or self._complete
                    self.failed = kind == "response.failed"
                if self._wants_model:
                    self._note_model(response)
            elif kind == "response.output_text.delta" and isinstance(decoded.get("delta"), str):
                self.text_parts.append(decoded["delta"])
            return True
        usage = decoded.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        if self._wants_model:
            self._note_model(decoded)
        for choice in decoded.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                self.text_parts.append(content)
        return not (self.hide_usage_chunk and decoded.get("choices") == [] and isinstance(usage, dict))

    def _note_model(self, reply: dict[str, Any]) -> None:
        model = reply.get("model")
        if isinstance(model, str) and model and len(model) <= 200:  # Azure's first chunk names ""
            self._model = model

    def _anthropic(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            usage = (event.get("message") or {}).get("usage")
            if isinstance(usage, dict):
                self._usage = dict(usage)
        elif kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._usage = {**(self._usage or {}), **usage}
        elif kind == "content_block_delta":
            text = (event.get("delta") or {}).get("text")
            if isinstance(text, str):
                self.text_parts.append(text)
        elif kind == "message_stop":
            self._complete = True
