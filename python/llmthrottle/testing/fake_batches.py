"""The fake provider's batch APIs: OpenAI's Files and Batches (`POST /v1/files`, `POST /v1/batches`,
`GET /v1/batches` (listed), `GET /v1/batches/{id}`, `GET /v1/files/{id}/content`) and Anthropic's
Message Batches (`POST /v1/messages/batches`, `GET /v1/messages/batches` (listed),
`GET /v1/messages/batches/{id}`, `.../results`), in the shapes their SDKs parse. A batch is
`in_progress` for `batch_delay_s`, then answers every request as the fake's synchronous endpoints
would (reply length, input counted by `lt.estimate`), outside the rate limits (batches have their
own queue); `error_rate` fails that share of its requests.

Lists are newest first and paged as the real APIs page them: OpenAI by `after` (the last id of
the previous page) and `limit` (1..100, default 20); Anthropic by `after_id` (older) or
`before_id` (newer) and `limit` (1..1000, default 20), with `first_id`, `last_id`, `has_more`.
An Anthropic `custom_id` must match `^[a-zA-Z0-9_-]{1,64}$`, as the real API requires.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..request_estimate import estimate

if TYPE_CHECKING:
    from .fake_provider import FakeProvider

__all__ = ["FakeBatches"]

_ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class _Batch:
    id: str
    family: str
    requests: list[tuple[str, dict[str, Any]]]  # (custom_id, body)
    created: float
    ready_at: float
    results: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class FakeBatches:
    """The batch endpoints of one FakeProvider (see the module docstring)."""

    def __init__(self, provider: FakeProvider, batch_delay_s: float) -> None:
        self.provider = provider
        self.batch_delay_s = batch_delay_s
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, _Batch] = {}

    def install(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._openai_create)
        app.router.add_get("/v1/batches", self._openai_list)
        app.router.add_get("/v1/batches/{id}", self._openai_retrieve)
        app.router.add_post("/v1/messages/batches", self._anthropic_create)
        app.router.add_get("/v1/messages/batches", self._anthropic_list)
        app.router.add_get("/v1/messages/batches/{id}", self._anthropic_retrieve)
        app.router.add_get("/v1/messages/batches/{id}/results", self._anthropic_results)

    # ------------------------------------------------------------------ answering a batch

    def _ended(self, batch: _Batch) -> bool:
        if time.time() < batch.ready_at:
            return False
        if batch.results is None:
            batch.results = [self._answer(batch.family, custom_id, body) for custom_id, body in batch.requests]
            if batch.family == "openai":
                batch.output_file_id = f"file-{uuid.uuid4().hex[:24]}"
                self.files[batch.output_file_id] = "".join(json.dumps(r) + "\n" for r in batch.results).encode()
        return True

    def _answer(self, family: str, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        provider = self.provider
        model = str(body.get("model") or "")
        requested = body.get("max_completion_tokens", body.get("max_tokens"))
        requested = requested if type(requested) is int else None
        failed = provider._server_error_now()
        with provider._lock:
            provider.counters.batch_requests += 1
        if family == "anthropic":
            from .fake_provider import anthropic_message

            if failed:
                error = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
                return {"custom_id": custom_id, "result": {"type": "errored", "error": error}}
            input_tokens, output_tokens = estimate(body, "anthropic").input_tokens, provider._reply_tokens(requested)
            message = anthropic_message(f"msg_{uuid.uuid4().hex[:24]}", model, input_tokens, output_tokens, requested)
            return {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}
        from .fake_provider import chat_completion

        request_id = f"req_{uuid.uuid4().hex[:24]}"
        if failed:
            error_reply = {"error": {"message": "The server had an error", "type": "server_error"}}
            response = {"status_code": 500, "request_id": request_id, "body": error_reply}
        else:
            input_tokens, output_tokens = estimate(body, "openai").input_tokens, provider._reply_tokens(requested)
            reply = chat_completion(
                f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), model, input_tokens, output_tokens, requested
            )
            response = {"status_code": 200, "request_id": request_id, "body": reply}
        return {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id, "response": response, "error": None}

    # ------------------------------------------------------------------ OpenAI

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if isinstance(upload, web.FileField):
            content, filename = upload.file.read(), upload.filename
        else:
            content, filename = str(upload or "").encode(), "batch.jsonl"
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        self.files[file_id] = content
        return web.json_response(
            {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": str(form.get("purpose") or "batch"),
                "status": "processed",
            }
        )

    async def _file_content(self, request: web.Request) -> web.Response:
        content = self.files.get(request.match_info["id"])
        if content is None:
            return web.json_response(
                {"error": {"message": "No such file", "type": "invalid_request_error"}}, status=404
            )
        return web.Response(body=content, content_type="application/octet-stream")

    async def _openai_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        content = self.files.get(str(body.get("input_file_id")))
        if content is None:
            return web.json_response(
                {"error": {"message": "input_file_id is unknown", "type": "invalid_request_error"}}, status=400
            )
        requests = []
        for line in content.decode().splitlines():
            if line.strip():
                entry = json.loads(line)
                requests.append((str(entry["custom_id"]), entry["body"]))
        batch = self._new("batch", "openai", requests)
        batch.metadata = dict(body.get("metadata") or {})
        return web.json_response(self._openai_view(batch, body))

    async def _openai_retrieve(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return web.json_response(
                {"error": {"message": "No such batch", "type": "invalid_request_error"}}, status=404
            )
        return web.json_response(self._openai_view(batch, {}))

    async def _openai_list(self, request: web.Request) -> web.Response:
        page = self._page(request, "openai", 100, before=None, after=request.query.get("after"))
        if isinstance(page, web.Response):
            return page
        data = [self._openai_view(batch, {}) for batch in page[0]]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": page[1],
            }
        )

    def _openai_view(self, batch: _Batch, given: dict[str, Any]) -> dict[str, Any]:
        ended = self._ended(batch)
        failed = sum(1 for r in batch.results or () if r["response"]["status_code"] >= 400)
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": given.get("endpoint", "/v1/chat/completions"),
            "errors": None,
            "input_file_id": given.get("input_file_id", ""),
            "completion_window": "24h",
            "status": "completed" if ended else "in_progress",
            "output_file_id": batch.output_file_id,
            "error_file_id": None,
            "created_at": int(batch.created),
            "request_counts": {
                "total": len(batch.requests),
                "completed": len(batch.requests) - failed if ended else 0,
                "failed": failed,
            },
            "metadata": batch.metadata,
        }

    # ------------------------------------------------------------------ Anthropic

    async def _anthropic_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        requests = [(str(entry["custom_id"]), entry["params"]) for entry in body.get("requests") or ()]
        for custom_id, _ in requests:
            if not _ANTHROPIC_CUSTOM_ID.match(custom_id):
                message = f"requests: custom_id {custom_id!r} must match ^[a-zA-Z0-9_-]{{1,64}}$"
                error = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
                return web.json_response(error, status=400)
        return web.json_response(self._anthropic_view(self._new("msgbatch", "anthropic", requests), request))

    async def _anthropic_list(self, request: web.Request) -> web.Response:
        query = request.query
        page = self._page(request, "anthropic", 1000, before=query.get("before_id"), after=query.get("after_id"))
        if isinstance(page, web.Response):
            return page
        data = [self._anthropic_view(batch, request) for batch in page[0]]
        return web.json_response(
            {
                "data": data,
                "has_more": page[1],
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def _anthropic_retrieve(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            error = {"type": "error", "error": {"type": "not_found_error", "message": "No such batch"}}
            return web.json_response(error, status=404)
        return web.json_response(self._anthropic_view(batch, request))

    async def _anthropic_results(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None or not self._ended(batch):
            error = {"type": "error", "error": {"type": "not_found_error", "message": "No results yet"}}
            return web.json_response(error, status=404)
        text = "".join(json.dumps(r) + "\n" for r in batch.results or ())
        return web.Response(text=text, content_type="application/binary")

    def _anthropic_view(self, batch: _Batch, request: web.Request) -> dict[str, Any]:
        ended = self._ended(batch)
        errored = sum(1 for r in batch.results or () if r["result"]["type"] != "succeeded")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(batch.created))
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else len(batch.requests),
                "succeeded": len(batch.requests) - errored if ended else 0,
                "errored": errored,
                "canceled": 0,
                "expired": 0,
            },
            "ended_at": stamp if ended else None,
            "created_at": stamp,
            "expires_at": stamp,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{request.scheme}://{request.host}/v1/messages/batches/{batch.id}/results"
            if ended
            else None,
        }

    # ------------------------------------------------------------------ shared

    def _page(
        self, request: web.Request, family: str, most: int, *, before: str | None, after: str | None
    ) -> tuple[list[_Batch], bool] | web.Response:
        """One page of `family`'s batches, newest first: those after `after` (older), or the
        `limit` just before `before` (newer); and whether more lie beyond the page."""
        raw = request.query.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= most:
            message = f"limit must be an integer from 1 to {most}"
            if family == "openai":
                return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=400)
            error = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
            return web.json_response(error, status=400)
        limit = int(raw)
        newest_first = [batch for batch in reversed(self.batches.values()) if batch.family == family]
        ids = [batch.id for batch in newest_first]
        if before is not None:
            end = ids.index(before) if before in ids else 0
            return newest_first[max(0, end - limit) : end], end - limit > 0
        start = ids.index(after) + 1 if after is not None and after in ids else (len(ids) if after else 0)
        return newest_first[start : start + limit], start + limit < len(ids)

    def _new(self, prefix: str, family: str, requests: list[tuple[str, dict[str, Any]]]) -> _Batch:
        now = time.time()
        batch = _Batch(f"{prefix}_{uuid.uuid4().hex[:24]}", family, requests, now, now + self.batch_delay_s)
        self.batches[batch.id] = batch
        with self.provider._lock:
            self.provider.counters.batches += 1
        return batch
