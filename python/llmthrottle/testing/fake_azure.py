"""The fake provider's Azure OpenAI, served beside its OpenAI and Anthropic APIs, in the shapes
`openai.AzureOpenAI` builds and parses:

- `POST /openai/deployments/{deployment}/chat/completions?api-version=...` and `.../embeddings`
  (the body's `model` is optional: the path names the deployment), `POST /openai/responses` and
  the `/openai/v1/...` API (`chat/completions`, `embeddings`, `responses`), where the body's
  `model` names the deployment. A path other than v1 without `api-version` is a 404.
- An `api-key` header (checked against `azure_api_key` when one is set) or an Entra ID
  `Authorization: Bearer` token; neither is a 401.
- `azure_deployments` maps each deployment to the model it runs (the `model` its replies name);
  an unknown deployment is a 404 `DeploymentNotFound`. Without it any deployment runs the model
  of its name.
- Limits per deployment, as Azure keeps them: `rpm` as a window of rpm/6 requests per 10
  seconds, `tpm` per minute, a request charged its input plus its max tokens on arrival. Every
  answer says `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (the requests of the
  10-second window, resets in whole seconds); a 429 says `retry-after` (whole seconds) and
  `retry-after-ms`.
- Errors in Azure's shape, `{"error": {"code": "429", "message": "..."}}`; chat replies carry
  Azure's content-filter results, and a stream opens with a chunk that has no choices.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from ..providers.protocol import error_body
from ..request_estimate import estimate

if TYPE_CHECKING:
    from .fake_provider import FakeProvider, _Bucket

__all__ = ["FakeAzure", "deployment_map"]

_Kind = Literal["chat", "embeddings", "responses"]

_OPERATIONS = {"chat": "ChatCompletions_Create", "embeddings": "Embeddings_Create", "responses": "Responses_Create"}


class FakeAzure:
    """The Azure OpenAI endpoints of one FakeProvider (see the module docstring)."""

    def __init__(self, provider: FakeProvider, deployments: Mapping[str, str] | None, api_key: str | None) -> None:
        if deployments is not None and not all(
            isinstance(name, str) and name and isinstance(model, str) and model for name, model in deployments.items()
        ):
            raise ValueError("azure_deployments must map deployment names to model names")
        self.provider = provider
        self.deployments = dict(deployments) if deployments is not None else None
        self.api_key = api_key
        self._buckets: dict[str, dict[str, _Bucket]] = {}

    def install(self, app: web.Application) -> None:
        paths: tuple[tuple[_Kind, str], ...] = (("chat", "chat/completions"), ("embeddings", "embeddings"))
        for kind, path in paths:
            app.router.add_post(f"/openai/deployments/{{deployment}}/{path}", self._handler(kind, in_path=True))
            app.router.add_post(f"/openai/v1/{path}", self._handler(kind, v1=True))
        app.router.add_post("/openai/responses", self._handler("responses"))
        app.router.add_post("/openai/v1/responses", self._handler("responses", v1=True))

    def _handler(self, kind: _Kind, *, in_path: bool = False, v1: bool = False) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, kind, in_path, v1)

        return handle

    # ------------------------------------------------------------------ limits

    def _deployment_buckets(self, deployment: str) -> dict[str, _Bucket]:
        from .fake_provider import _Bucket

        provider = self.provider
        with provider._lock:
            buckets = self._buckets.get(deployment)
            if buckets is None:
                buckets = {}
                if provider.rpm is not None:  # Azure counts requests in 10-second windows
                    buckets["requests"] = _Bucket(provider.rpm, capacity=max(1, provider.rpm // 6))
                if provider.tpm is not None:
                    buckets["tokens"] = _Bucket(provider.tpm)
                self._buckets[deployment] = buckets
            return buckets

    def _headers(self, buckets: dict[str, _Bucket]) -> dict[str, str]:
        headers = {"apim-request-id": str(uuid.uuid4()), "x-ms-region": "Fake Region"}
        with self.provider._lock:
            for name, bucket in buckets.items():
                headers[f"x-ratelimit-limit-{name}"] = str(bucket.capacity)
                headers[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining())
                headers[f"x-ratelimit-reset-{name}"] = str(math.ceil(bucket.reset_s()))
        return headers

    def _error(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.provider._count(status)
        return web.json_response(error_body("azure", status, message, code=code), status=status, headers=headers)

    # ------------------------------------------------------------------ a request

    async def _serve(self, request: web.Request, kind: _Kind, in_path: bool, v1: bool) -> web.StreamResponse:
        provider = self.provider
        if not v1 and "api-version" not in request.query:
            return self._error(404, "Resource not found")
        key, bearer = request.headers.get("api-key"), request.headers.get("authorization", "")
        if not (bearer.startswith("Bearer ") and len(bearer) > 7) and (
            not key or (self.api_key is not None and key != self.api_key)
        ):
            return self._error(
                401,
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                "valid key for an active subscription and use a correct regional API endpoint for your resource.",
            )
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._error(400, "The request body must be a JSON object.", "BadRequest")
        deployment = request.match_info["deployment"] if in_path else body.get("model")
        if not isinstance(deployment, str) or not deployment:
            return self._error(400, "model is required: it names the deployment.", "BadRequest")
        model = deployment if self.deployments is None else self.deployments.get(deployment)
        if model is None:
            return self._error(
                404,
                "The API deployment for this resource does not exist. If you created the deployment within "
                "the last 5 minutes, please wait a moment and try again.",
                "DeploymentNotFound",
            )
        with provider._lock:
            provider.counters.requests += 1
        buckets = self._deployment_buckets(deployment)
        if provider._server_error_now():
            return self._error(500, "The server had an error while processing your request.", "InternalServerError")
        if kind == "chat":
            from .fake_provider import chat_max_tokens

            requested = chat_max_tokens(body)
        else:
            asked = body.get("max_output_tokens")
            requested = asked if type(asked) is int and kind == "responses" else None
        input_tokens = estimate(body, "openai", model, endpoint=kind, fallback="o200k_base").input_tokens
        output_tokens = provider._reply_tokens(requested) if kind != "embeddings" else 0
        # Azure counts a request's tokens when it arrives: its input and the output it may use.
        charge = input_tokens + (requested if requested is not None else output_tokens)
        limited, wait = provider._admit({"requests": 1, "tokens": charge}, input_tokens, buckets)
        if wait > 0:
            return self._rate_limited(request, kind, limited, wait, buckets)
        with provider._lock:
            provider.counters.output_tokens += output_tokens
        headers = self._headers(buckets)
        if kind == "chat":
            return await provider.chat_reply(
                request, body, model, requested, input_tokens, output_tokens, headers, azure=True
            )
        if kind == "responses":
            return await provider.responses_reply(request, body, model, input_tokens, output_tokens, headers)
        return provider.embeddings_reply(body, model, input_tokens, headers)

    def _rate_limited(
        self, request: web.Request, kind: str, limited: str, wait: float, buckets: dict[str, _Bucket]
    ) -> web.Response:
        seconds, milliseconds = max(1, math.ceil(wait)), max(1, math.ceil(wait * 1000))
        with self.provider._lock:
            self.provider.counters.last_retry_after_ms = milliseconds
        version = request.query.get("api-version", "v1")
        what = "call" if limited == "requests" else "token"
        return self._error(
            429,
            f"Requests to the {_OPERATIONS[kind]} Operation under Azure OpenAI API version {version} have "
            f"exceeded {what} rate limit of your current OpenAI S0 pricing tier. "
            f"Please retry after {seconds} seconds.",
            headers={**self._headers(buckets), "retry-after": str(seconds), "retry-after-ms": str(milliseconds)},
        )


def deployment_map(pairs: list[str]) -> dict[str, str]:
    """`NAME=MODEL` pairs (the CLI's `--azure-deployment`) as a mapping."""
    found = {}
    for pair in pairs:
        name, _, model = pair.partition("=")
        if not name or not model:
            raise ValueError(f"--azure-deployment takes NAME=MODEL, not {json.dumps(pair)}")
        found[name] = model
    return found
