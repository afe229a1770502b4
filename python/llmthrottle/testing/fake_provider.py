"""A fake LLM provider on loopback: OpenAI chat completions (streaming and not), responses and
embeddings, and Anthropic messages (streaming and not), with each provider's rate-limit semantics.
The test double for everything in llmthrottle that talks to a provider, used with the real `openai`
and `anthropic` SDKs.

    with FakeProvider(rpm=60, tpm=20_000) as provider:
        client = openai.OpenAI(base_url=provider.openai_base_url, api_key="test")
        anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="test")

Limits are token buckets that refill continuously (a 60 RPM bucket holds 60 and gains one a
second), charged as each provider charges:

- OpenAI: one request, and input tokens plus the requested `max_tokens` (or
  `max_completion_tokens`, else the configured output length) toward TPM, at admission.
  Headers `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets as `6m0s`, `20ms`);
  a 429 carries `retry-after` and `retry-after-ms` and `code: rate_limit_exceeded`, or
  `insufficient_quota` when the account is out of credit.
- Anthropic: one request; input tokens toward ITPM at admission, cache reads left out
  (prompt caching: `fake_prompt_cache.py`); output tokens toward OTPM as generated (a request
  is refused while OTPM is in debt). Headers
  `anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,reset}`
  (resets in RFC 3339); a 429 is a `rate_limit_error` with `retry-after`; overload is a 529
  `overloaded_error`.

- Azure OpenAI (`fake_azure.py`): deployment paths and the `/openai/v1` API on the same
  server, `api-key` or Entra ID auth, limits per deployment (requests per 10 seconds), Azure's
  headers and error bodies: `openai.AzureOpenAI(azure_endpoint=provider.azure_endpoint, ...)`.

`GET /fake/counters` answers what the fake has seen (requests, 429s, errors, tokens, what each
limit was charged), for a test or benchmark in another process.

Input tokens are counted with `llmthrottle.estimate`, so the fake and the library agree on
what a request costs; the reply is `output_tokens` tokens of filler text, or, for a request that
offers tools, a call of one of them (`fake_tools.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..pricing.usage import limits_count_cache_reads
from ..providers.headers import format_reset_duration, rfc3339_in
from ..providers.protocol import error_body
from ..request_estimate import estimate
from .fake_azure import FakeAzure
from .fake_batches import FakeBatches
from .fake_prompt_cache import CacheSplit, PromptCache
from .fake_tools import ToolCall, tool_call_for

__all__ = ["FakeProvider"]


_NS_PER_MINUTE = 60_000_000_000


class _Bucket:
    """`capacity` units (default: `per_minute`) that refill at `per_minute` per minute; may go
    into debt.

    Exact, as a provider's count is: the level is kept in integer units x nanoseconds-per-minute,
    so a refill of `elapsed_ns * per_minute` loses nothing. A float level (tried first) fell
    short by ~1e-15 of a unit at the very instant a GCRA limiter set to the same rate admits,
    so a wrapper with the limits known met 429s no exact provider would send."""

    def __init__(
        self, per_minute: int, capacity: int | None = None, clock_ns: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self.capacity = per_minute if capacity is None else capacity
        self._per_minute = per_minute
        self._full = self.capacity * _NS_PER_MINUTE
        self._level = self._full
        self._clock_ns = clock_ns
        self._at = clock_ns()

    def _refill(self) -> None:
        now = self._clock_ns()
        if now > self._at:
            self._level = min(self._full, self._level + (now - self._at) * self._per_minute)
            self._at = now

    def wait_for(self, amount: int) -> float:
        """Seconds until `amount` fits (0: it fits now)."""
        self._refill()
        missing = max(amount, 0) * _NS_PER_MINUTE - self._level
        return 0.0 if missing <= 0 else -(-missing // self._per_minute) / 1e9

    def take(self, amount: int) -> None:
        self._refill()
        self._level -= amount * _NS_PER_MINUTE

    def remaining(self) -> int:
        self._refill()
        return max(0, self._level // _NS_PER_MINUTE)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        self._refill()
        return (self._full - self._level) / self._per_minute / 1e9


@web.middleware
async def _quiet_disconnects(request: web.Request, handler: Any) -> web.StreamResponse:
    """A client that goes away mid-request (killed, timed out) is normal for a provider: the
    request ends there, without a traceback."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ConnectionError:
        raise web.HTTPBadRequest(text="client disconnected") from None


@dataclass
class _Counters:
    requests: int = 0
    rate_limited: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    charged: dict[str, int] = field(default_factory=dict)  # per limit, what admitted requests took
    batches: int = 0  # provider batches created (fake_batches.py)
    batch_requests: int = 0  # requests answered inside them
    last_retry_after_ms: int = 0  # what the last 429 told its caller to wait


def chat_completion(
    ident: str,
    created: int,
    model: str,
    input_tokens: int,
    output_tokens: int,
    requested: int | None,
    tool_call: ToolCall | None = None,
) -> dict[str, Any]:
    """A whole OpenAI chat completion of `output_tokens` tokens (or a call of a tool)."""
    message: dict[str, Any] = {"role": "assistant", "content": " tok" * output_tokens}
    finish = "stop" if output_tokens < (requested or 1 << 62) else "length"
    if tool_call is not None:
        message, finish = {"role": "assistant", "content": None, "tool_calls": [tool_call.openai()]}, "tool_calls"
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
    }


def chat_max_tokens(body: dict[str, Any]) -> int | None:
    """The output a chat request asks for at most (`max_completion_tokens`, else `max_tokens`)."""
    requested = body.get("max_completion_tokens", body.get("max_tokens"))
    return requested if type(requested) is int else None


def anthropic_message(
    ident: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    requested: int | None,
    tool_call: ToolCall | None = None,
    cache: CacheSplit | None = None,
) -> dict[str, Any]:
    """A whole Anthropic message of `output_tokens` tokens (or a call of a tool); `cache` says
    how its `input_tokens` met the prompt cache (None: none of them did)."""
    content = [{"type": "text", "text": " tok" * output_tokens}]
    stop = "end_turn" if output_tokens < (requested or 1 << 62) else "max_tokens"
    if tool_call is not None:
        content, stop = [tool_call.anthropic()], "tool_use"
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "stop_sequence": None,
        "content": content,
        "stop_reason": stop,
        "usage": {**(cache or CacheSplit(input_tokens)).usage(), "output_tokens": output_tokens},
    }


class FakeProvider:
    """A running fake provider (see the module docstring); a context manager.

    `rpm`/`tpm` are OpenAI's limits, `itpm`/`otpm` Anthropic's input and output token limits
    (`rpm` applies to both); None means unlimited. `output_tokens` is the length of every reply
    (capped by the request's max tokens); `ttft_s` and `per_token_s` pace streams and replies;
    `error_rate` answers that share of requests with a 500, `overload_rate` (Anthropic) with a
    529; `insufficient_quota` refuses every OpenAI request as out of credit. The batch APIs
    (`fake_batches.py`) finish a batch `batch_delay_s` after it was created. Azure OpenAI
    (`fake_azure.py`) serves `azure_deployments` (deployment name to the model it runs; None: any
    deployment, running the model of its name), accepting any `api-key` unless `azure_api_key`
    is set, with `rpm`/`tpm` per deployment.
    """

    def __init__(
        self,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        output_tokens: int = 16,
        ttft_s: float = 0.0,
        per_token_s: float = 0.0,
        error_rate: float = 0.0,
        overload_rate: float = 0.0,
        insufficient_quota: bool = False,
        batch_delay_s: float = 0.2,
        azure_deployments: Mapping[str, str] | None = None,
        azure_api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
    ) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm), ("itpm", itpm), ("otpm", otpm)):
            if value is not None and (type(value) is not int or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if type(output_tokens) is not int or output_tokens < 0:
            raise ValueError(f"output_tokens must be a non-negative int, got {output_tokens!r}")
        self.rpm, self.tpm, self.itpm, self.otpm = rpm, tpm, itpm, otpm
        self.output_tokens = output_tokens
        self.ttft_s, self.per_token_s = ttft_s, per_token_s
        self.error_rate, self.overload_rate = error_rate, overload_rate
        self.insufficient_quota = insufficient_quota
        self.counters = _Counters()
        self.batch_api = FakeBatches(self, batch_delay_s)
        self.azure_api = FakeAzure(self, azure_deployments, azure_api_key)
        self.prompt_cache = PromptCache()
        self._random = random.Random(seed)
        self._buckets = {
            name: _Bucket(value)
            for name, value in (("requests", rpm), ("tokens", tpm), ("input", itpm), ("output", otpm))
            if value is not None
        }
        self._lock = threading.Lock()
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    @property
    def azure_endpoint(self) -> str:
        """What `openai.AzureOpenAI(azure_endpoint=...)` takes."""
        return self.base_url

    @property
    def azure_v1_base_url(self) -> str:
        """Azure's `/openai/v1` API, for `openai.OpenAI(base_url=...)`."""
        return f"{self.base_url}/openai/v1"

    def start(self) -> FakeProvider:
        """Serves on a thread of its own; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as error:  # reported to start()
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())  # type: ignore[union-attr]
            loop.close()

        self._thread = threading.Thread(target=serve, name="llmthrottle-fake-provider", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    async def _start_site(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 << 20, middlewares=[_quiet_disconnects])
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/v1/responses", self._openai_responses)
        app.router.add_post("/v1/embeddings", self._openai_embeddings)
        app.router.add_post("/v1/messages", self._anthropic_messages)
        app.router.add_get("/fake/counters", self._counters)
        self.batch_api.install(app)
        self.azure_api.install(app)
        return app

    async def _counters(self, request: web.Request) -> web.Response:
        """What the fake has seen (`counters`), for a test or benchmark in another process."""
        with self._lock:
            counters = dataclasses.asdict(self.counters)
        return web.json_response(counters)

    # ------------------------------------------------------------------ shared

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise web.HTTPBadRequest(
                text=json.dumps(
                    {"error": {"message": "body must be a JSON object with a model", "type": "invalid_request_error"}}
                ),
                content_type="application/json",
            )
        return body

    def _count(self, status: int) -> None:
        with self._lock:
            self.counters.by_status[status] = self.counters.by_status.get(status, 0) + 1

    def _admit(
        self, charges: dict[str, int], input_tokens: int, buckets: dict[str, _Bucket] | None = None
    ) -> tuple[str, float]:
        """Charges every bucket (of `buckets`, default the fake's own) when all of them have room;
        else charges none and returns the bucket that waits longest and how long (0.0: admitted)."""
        buckets = self._buckets if buckets is None else buckets
        with self._lock:
            waits = {name: buckets[name].wait_for(amount) for name, amount in charges.items() if name in buckets}
            limited = max(waits, key=lambda name: waits[name], default="")
            wait = waits.get(limited, 0.0)
            if wait > 0:
                self.counters.rate_limited += 1
                return limited, wait
            for name, amount in charges.items():
                if name in buckets:
                    buckets[name].take(amount)
                self.counters.charged[name] = self.counters.charged.get(name, 0) + amount
            self.counters.input_tokens += input_tokens
            return limited, 0.0

    def _server_error_now(self) -> bool:
        """Whether this request draws a 500 (at `error_rate`); counted when it does."""
        if self._random.random() >= self.error_rate:
            return False
        with self._lock:
            self.counters.errors += 1
        return True

    def _reply_tokens(self, requested: int | None) -> int:
        return self.output_tokens if requested is None else max(0, min(self.output_tokens, requested))

    async def _pace(self, tokens: int) -> None:
        delay = self.ttft_s + self.per_token_s * tokens
        if delay > 0:
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ OpenAI

    def _openai_headers(self) -> dict[str, str]:
        headers = {}
        for name, bucket_name in (("requests", "requests"), ("tokens", "tokens")):
            bucket = self._buckets.get(bucket_name)
            if bucket is not None:
                headers[f"x-ratelimit-limit-{name}"] = str(bucket.capacity)
                headers[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining())
                headers[f"x-ratelimit-reset-{name}"] = format_reset_duration(bucket.reset_s())
        return headers

    def _openai_error(
        self, status: int, message: str, kind: str, code: str | None, headers: dict[str, str] | None = None
    ) -> web.Response:
        self._count(status)
        body = error_body("openai", status, message, kind=kind, code=code)
        return web.json_response(body, status=status, headers={**self._openai_headers(), **(headers or {})})

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        requested = chat_max_tokens(body)
        refused, input_tokens, output_tokens = await self._openai_admit(body, requested, True)
        if refused is not None:
            return refused
        return await self.chat_reply(
            request, body, body["model"], requested, input_tokens, output_tokens, self._openai_headers()
        )

    async def chat_reply(
        self,
        request: web.Request,
        body: dict[str, Any],
        model: str,
        requested: int | None,
        input_tokens: int,
        output_tokens: int,
        headers: dict[str, str],
        azure: bool = False,
    ) -> web.StreamResponse:
        """An admitted chat completion's answer from `model`, whole or streamed. `azure` adds
        Azure's content-filter results (in a stream, a first chunk with no choices)."""
        usage = {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        filtered = {"prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]} if azure else {}
        tool_call = tool_call_for(body, "openai")
        if not body.get("stream"):
            await self._pace(output_tokens)
            self._count(200)
            whole = chat_completion(ident, created, model, input_tokens, output_tokens, requested, tool_call)
            if azure:
                whole["choices"][0]["content_filter_results"] = {}
            return web.json_response({**whole, **filtered}, headers=headers)
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        self._count(200)

        def event(data: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            if azure:
                choice["content_filter_results"] = {}
            return event(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                }
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if self.ttft_s:
            await asyncio.sleep(self.ttft_s)
        if azure:  # Azure's stream opens with the prompt's filter results, in an unnamed chunk
            await response.write(event({"choices": [], "created": 0, "id": "", "model": "", "object": "", **filtered}))
        await response.write(chunk({"role": "assistant", "content": ""}, None))
        if tool_call is not None:
            call = tool_call.openai()
            await response.write(
                chunk({"tool_calls": [{"index": 0, **call, "function": {**call["function"], "arguments": ""}}]}, None)
            )
            await response.write(
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": tool_call.arguments_json}}]}, None)
            )
        for _ in range(output_tokens if tool_call is None else 0):
            if self.per_token_s:
                await asyncio.sleep(self.per_token_s)
            await response.write(chunk({"content": " tok"}, None))
        await response.write(chunk({}, "stop" if tool_call is None else "tool_calls"))
        if include_usage:
            await response.write(
                event(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _openai_admit(
        self, body: dict[str, Any], requested: int | None, replies: bool
    ) -> tuple[web.Response | None, int, int]:
        """Counts and admits an OpenAI request, charging input plus the requested output (or the
        reply's length) toward TPM: (the refusal, or None; input tokens; output tokens to send)."""
        with self._lock:
            self.counters.requests += 1
        if self.insufficient_quota:
            return (
                self._openai_error(
                    429,
                    "You exceeded your current quota, please check your plan and billing details.",
                    "insufficient_quota",
                    "insufficient_quota",
                ),
                0,
                0,
            )
        if self._server_error_now():
            return (
                self._openai_error(500, "The server had an error while processing your request.", "server_error", None),
                0,
                0,
            )
        input_tokens = estimate(body, "openai").input_tokens
        output_tokens = self._reply_tokens(requested) if replies else 0
        charge = input_tokens + (requested if requested is not None else output_tokens)
        limited, wait = self._admit({"requests": 1, "tokens": charge}, input_tokens)
        if wait > 0:
            bucket = self._buckets[limited]
            with self._lock:
                self.counters.last_retry_after_ms = max(1, math.ceil(wait * 1000))
            return (
                self._openai_error(
                    429,
                    f"Rate limit reached for {body['model']} on {limited} per min (TPM/RPM): Limit "
                    f"{bucket.capacity}, Used {bucket.capacity - bucket.remaining()}, "
                    f"Requested {charge if limited == 'tokens' else 1}. "
                    f"Please try again in {format_reset_duration(wait)}.",
                    limited,
                    "rate_limit_exceeded",
                    {
                        "retry-after": str(max(1, math.ceil(wait))),
                        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                    },
                ),
                input_tokens,
                0,
            )
        with self._lock:
            self.counters.output_tokens += output_tokens
        return None, input_tokens, output_tokens

    async def _openai_responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        requested = body.get("max_output_tokens")
        refused, input_tokens, output_tokens = await self._openai_admit(
            body, requested if type(requested) is int else None, True
        )
        if refused is not None:
            return refused
        return await self.responses_reply(
            request, body, body["model"], input_tokens, output_tokens, self._openai_headers()
        )

    async def responses_reply(
        self,
        request: web.Request,
        body: dict[str, Any],
        model: str,
        input_tokens: int,
        output_tokens: int,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """An admitted Responses API request's answer from `model`, whole or streamed."""
        ident, message_id = f"resp_{uuid.uuid4().hex[:24]}", f"msg_{uuid.uuid4().hex[:12]}"

        def whole(status: str, text: str, usage: dict[str, Any] | None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "response",
                "created_at": int(time.time()),
                "model": model,
                "status": status,
                "output": [
                    {
                        "type": "message",
                        "id": message_id,
                        "role": "assistant",
                        "status": status,
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ]
                if text
                else [],
                "usage": usage,
            }

        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if not body.get("stream"):
            await self._pace(output_tokens)
            self._count(200)
            return web.json_response(whole("completed", " tok" * output_tokens, usage), headers=headers)
        # The Responses API's stream: typed events, the usage in the final response.completed.
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        self._count(200)
        sequence = 0

        async def event(kind: str, **data: Any) -> None:
            nonlocal sequence
            payload = {"type": kind, "sequence_number": sequence, **data}
            sequence += 1
            await response.write(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode())

        await event("response.created", response=whole("in_progress", "", None))
        if self.ttft_s:
            await asyncio.sleep(self.ttft_s)
        for _ in range(output_tokens):
            if self.per_token_s:
                await asyncio.sleep(self.per_token_s)
            await event(
                "response.output_text.delta",
                item_id=message_id,
                output_index=0,
                content_index=0,
                delta=" tok",
                logprobs=[],
            )
        await event("response.completed", response=whole("completed", " tok" * output_tokens, usage))
        await response.write_eof()
        return response

    async def _openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        refused, input_tokens, _ = await self._openai_admit(body, None, False)
        if refused is not None:
            return refused
        return self.embeddings_reply(body, body["model"], input_tokens, self._openai_headers())

    def embeddings_reply(
        self, body: dict[str, Any], model: str, input_tokens: int, headers: dict[str, str]
    ) -> web.Response:
        """An admitted embeddings request's answer from `model`: one vector per input."""
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
        self._count(200)
        return web.json_response(
            {
                "object": "list",
                "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": [0.0] * 8} for i in range(count)],
                "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens},
            },
            headers=headers,
        )

    # ------------------------------------------------------------------ Anthropic

    def _anthropic_headers(self) -> dict[str, str]:
        headers = {}
        for name, bucket_name in (("requests", "requests"), ("input-tokens", "input"), ("output-tokens", "output")):
            bucket = self._buckets.get(bucket_name)
            if bucket is not None:
                headers[f"anthropic-ratelimit-{name}-limit"] = str(bucket.capacity)
                headers[f"anthropic-ratelimit-{name}-remaining"] = str(bucket.remaining())
                headers[f"anthropic-ratelimit-{name}-reset"] = rfc3339_in(bucket.reset_s())
        # `tokens` restates the most restrictive token limit at the moment: the bucket nearest
        # to empty.
        token_buckets = [bucket for name, bucket in self._buckets.items() if name in ("input", "output")]
        if token_buckets:
            tightest = min(token_buckets, key=lambda bucket: bucket.remaining() / bucket.capacity)
            headers["anthropic-ratelimit-tokens-limit"] = str(tightest.capacity)
            headers["anthropic-ratelimit-tokens-remaining"] = str(tightest.remaining())
            headers["anthropic-ratelimit-tokens-reset"] = rfc3339_in(tightest.reset_s())
        return headers

    def _anthropic_error(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        self._count(status)
        body = error_body("anthropic", status, message, kind=kind)
        return web.json_response(body, status=status, headers={**self._anthropic_headers(), **(headers or {})})

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        with self._lock:
            self.counters.requests += 1
        if self._random.random() < self.overload_rate:
            return self._anthropic_error(529, "overloaded_error", "Overloaded")
        if self._server_error_now():
            return self._anthropic_error(500, "api_error", "Internal server error")
        input_tokens = estimate(body, "anthropic").input_tokens
        cache = self.prompt_cache.split(body, f"{request.headers.get('x-api-key', '')}|{body['model']}", input_tokens)
        counted = cache.uncached + cache.written
        if limits_count_cache_reads("anthropic", body["model"]):
            counted += cache.read
        # Output tokens are charged as generated: a request waits only while OTPM is in debt.
        limited, wait = self._admit({"requests": 1, "input": counted, "output": 0}, input_tokens)
        if wait > 0:
            what = {"requests": "requests", "input": "input tokens", "output": "output tokens"}[limited]
            return self._anthropic_error(
                429,
                "rate_limit_error",
                f"This request would exceed the rate limit for "
                f"your organization of {self._buckets[limited].capacity} {what} per minute.",
                {"retry-after": str(max(1, math.ceil(wait)))},
            )
        requested = body.get("max_tokens")
        output_tokens = self._reply_tokens(requested if type(requested) is int else None)
        with self._lock:
            if "output" in self._buckets:
                self._buckets["output"].take(output_tokens)
            self.counters.output_tokens += output_tokens
        ident = f"msg_{uuid.uuid4().hex[:24]}"
        headers = self._anthropic_headers()
        message = {"id": ident, "type": "message", "role": "assistant", "model": body["model"], "stop_sequence": None}
        stop = "end_turn" if output_tokens < (requested if type(requested) is int else 1 << 62) else "max_tokens"
        tool_call = tool_call_for(body, "anthropic")
        if not body.get("stream"):
            await self._pace(output_tokens)
            self._count(200)
            return web.json_response(
                anthropic_message(
                    ident,
                    body["model"],
                    input_tokens,
                    output_tokens,
                    requested if type(requested) is int else None,
                    tool_call,
                    cache,
                ),
                headers=headers,
            )
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        self._count(200)

        async def event(name: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode())

        if self.ttft_s:
            await asyncio.sleep(self.ttft_s)
        await event(
            "message_start",
            {
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "usage": {**cache.usage(), "output_tokens": 1},
                }
            },
        )
        if tool_call is not None:
            stop = "tool_use"
            await event("content_block_start", {"index": 0, "content_block": {**tool_call.anthropic(), "input": {}}})
            delta = {"type": "input_json_delta", "partial_json": tool_call.arguments_json}
            await event("content_block_delta", {"index": 0, "delta": delta})
        else:
            await event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        for _ in range(output_tokens if tool_call is None else 0):
            if self.per_token_s:
                await asyncio.sleep(self.per_token_s)
            await event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " tok"}})
        await event("content_block_stop", {"index": 0})
        await event(
            "message_delta",
            {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": output_tokens}},
        )
        await event("message_stop", {})
        await response.write_eof()
        return response
