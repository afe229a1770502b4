"""The sidecar's HTTP/JSON API, for any language and for curl::

    curl --unix-socket /run/llmthrottle/llmthrottle.sock http://x/health
    curl --unix-socket $S -d '{"key": "tenant:acme", "amounts": {"tokens": 1200}}' http://x/v1/acquire

An admitted acquire answers 200 with a `reservation_id` to commit or cancel; a denied one answers
429 with a `Retry-After` header and the same JSON shape. Errors answer
`{"error": kind, "message": ...}` with 400 (bad input), 403 (access), 404 (unknown namespace or
reservation), 422 (can never fit), 503 (overloaded) or 500. `/openapi.json` describes it all.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp.http_exceptions
from aiohttp import web

from .access import AccessPolicy, Peer, peer_credentials
from .binary import acquire_result
from .errors import ServiceError, details_of, http_status, kind_of
from .openapi import openapi_spec
from .quiet_log import client_mistakes
from .service import Service

__all__ = ["make_app"]

_ACQUIRE_FIELDS = (
    "allowed",
    "retry_after",
    "delay",
    "reset_after",
    "limited_by",
    "limited_key",
    "remaining",
    "reservation_id",
    "reserved",
)
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def make_app(
    service: Service, access: Callable[[], AccessPolicy], reload: Callable[[], dict[str, Any]], max_body_bytes: int
) -> web.Application:
    """The aiohttp application. `access` returns the current policy (it changes on reload);
    `reload` re-reads the policy file and returns a summary."""
    started = time.monotonic()
    metrics = service.metrics

    def peer_of(request: web.Request) -> Peer:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        return access().peer(*peer_credentials(sock))

    def handler(
        op: str, run: Callable[[web.Request, Any], Awaitable[web.Response]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            begin = time.perf_counter()
            try:
                body = await _json_body(request) if request.method == "POST" else None
                response = await run(request, body)
            except _PeerGone:
                return web.Response(status=400)  # nobody is left to read it
            except web.HTTPException as error:  # aiohttp's own refusals, e.g. 413 body too large
                metrics.error("http", "BadRequest")
                return _json({"error": "BadRequest", "message": error.text or error.reason}, error.status)
            except Exception as error:
                kind = kind_of(error)
                metrics.error("http", kind)
                if kind == "InternalError":
                    request.app.logger.exception("HTTP %s failed", request.path)
                answer: dict[str, Any] = {"error": kind, "message": str(error)}
                details = details_of(error, kind)
                if details:
                    answer["details"] = details
                return _json(answer, http_status(kind))
            metrics.request("http", op, time.perf_counter() - begin)
            return response

        return handle

    async def acquire(request: web.Request, body: Any) -> web.Response:
        key = _field(body, "key", (str, list))
        peer = peer_of(request)
        denied = peer.check_key(key)
        if denied is not None:
            raise ServiceError("AccessDenied", f"uid {peer.uid} may not use key {denied!r}")
        amounts = _field(body, "amounts", dict, {})
        max_wait = _field(body, "max_wait", (int, float), 0.0)
        decision, reservation_id = await service.run(
            service.acquire, _namespace(body), key, amounts, float(max_wait), peer.uid
        )
        answer = dict(zip(_ACQUIRE_FIELDS, acquire_result(decision, reservation_id)))
        if reservation_id is None:
            retry = max(1, math.ceil(answer["retry_after"]))
            return _json(answer, 429, headers={"Retry-After": str(retry)})
        return _json(answer)

    async def peek(request: web.Request, body: Any) -> web.Response:
        key = _field(body, "key", (str, list))
        if peer_of(request).check_key(key) is not None:
            raise ServiceError("AccessDenied", f"this uid may not use key {key!r}")
        decision = await service.run(service.peek, _namespace(body), key, _field(body, "amounts", dict, {}))
        return _json(dict(zip(_ACQUIRE_FIELDS, acquire_result(decision, None))))

    async def commit(request: web.Request, body: Any) -> web.Response:
        peer = peer_of(request)
        await service.run(service.commit, _reservation_id(body), _field(body, "usage", dict, {}), peer.uid, peer)
        return _json({"ok": True})

    async def cancel(request: web.Request, body: Any) -> web.Response:
        await service.run(service.cancel, _reservation_id(body), peer_of(request).uid)
        return _json({"ok": True})

    async def status(request: web.Request, body: Any) -> web.Response:
        key = request.query.get("key")
        if not key:
            raise ServiceError("BadRequest", "give the key as a query parameter: /v1/status?key=tenant:acme")
        if peer_of(request).check_key(key) is not None:
            raise ServiceError("AccessDenied", f"this uid may not use key {key!r}")
        namespace = request.query.get("namespace", "default")
        names = ("dimension", "kind", "remaining", "used", "reset_after", "capacity")
        limits = [dict(zip(names, entry)) for entry in await service.run(service.status, namespace, key)]
        return _json({"namespace": namespace, "key": key, "limits": limits})

    async def register(request: web.Request, body: Any) -> web.Response:
        return _json(
            service.register(
                _namespace(body),
                _field(body, "limits", dict, None),
                _field(body, "rules", dict, None),
                may_admin=peer_of(request).may_admin,
            )
        )

    async def reload_policy(request: web.Request, body: Any) -> web.Response:
        if not peer_of(request).may_admin:
            raise ServiceError("AccessDenied", 'reloading the policy needs [access] pattern "*"')
        return _json(reload())

    async def health(request: web.Request, body: Any) -> web.Response:
        return _json(
            {
                "status": "ok",
                "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - started, 3),
                "namespaces": sorted(service.limiters),
                "held_reservations": len(service.held),
            }
        )

    async def prometheus(request: web.Request, body: Any) -> web.Response:
        return web.Response(
            text=metrics.render(may_see=peer_of(request).may_use),
            content_type="text/plain",
            headers={"X-Content-Type-Options": "nosniff"},
            charset="utf-8",
        )

    async def openapi(request: web.Request, body: Any) -> web.Response:
        return _json(openapi_spec())

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post("/v1/acquire", handler("acquire", acquire))
    app.router.add_post("/v1/peek", handler("peek", peek))
    app.router.add_post("/v1/commit", handler("commit", commit))
    app.router.add_post("/v1/cancel", handler("cancel", cancel))
    app.router.add_get("/v1/status", handler("status", status))
    app.router.add_post("/v1/register", handler("register", register))
    app.router.add_post("/v1/reload", handler("reload", reload_policy))
    app.router.add_get("/health", handler("health", health))
    app.router.add_get("/metrics", handler("metrics", prometheus))
    app.router.add_get("/openapi.json", handler("openapi", openapi))
    return app


async def _json_body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except (ConnectionError, aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError) as error:
        client_mistakes.note("bodies cut short", f"{request.path}: {error!r}")
        raise _PeerGone() from None
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ServiceError("BadRequest", f"body is not JSON: {error}") from None
    except RecursionError:
        raise ServiceError("BadRequest", "body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ServiceError("BadRequest", "body must be a JSON object")
    return body


class _PeerGone(Exception):
    """The client went away while its request was being read."""


_MISSING = object()


def _field(body: Any, name: str, kinds: Any, default: Any = _MISSING) -> Any:
    value = body.get(name, default) if isinstance(body, dict) else default
    if value is _MISSING:
        raise ServiceError("BadRequest", f"missing field {name!r}")
    if value is not default and (not isinstance(value, kinds) or isinstance(value, bool)):
        expected = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
        raise ServiceError("BadRequest", f"field {name!r} must be {expected}, not {type(value).__name__}")
    return value


def _namespace(body: Any) -> str:
    return str(_field(body, "namespace", str, "default"))


def _reservation_id(body: Any) -> str:
    value: str = _field(body, "reservation_id", str)
    return value


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=_dumps(body), status=status, content_type="application/json", headers=headers)
