"""The gateway's admin API: virtual keys listed, created, revoked and rotated over HTTP, behind
`Authorization: Bearer <admin key>` (the key read from `[gateway] admin_key_env`; the API is off
while that variable is unset). What `llmthrottle gateway keys` does from the command line."""

from __future__ import annotations

import hmac
import json
import os
from typing import TYPE_CHECKING

from aiohttp import web

from .._native import ConfigError
from .answers import error

if TYPE_CHECKING:
    from .server import Gateway

__all__ = ["AdminAPI"]


class AdminAPI:
    """The admin endpoints of one gateway (its key store, its tiers, its admin key)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def install(self, app: web.Application) -> None:
        app.router.add_get("/admin/keys", self.list)
        app.router.add_post("/admin/keys", self.create)
        app.router.add_post("/admin/keys/{key_id}/revoke", self.revoke)
        app.router.add_post("/admin/keys/{key_id}/rotate", self.rotate)

    def _refused(self, request: web.Request) -> web.Response | None:
        """None when the request carries the admin key; else the refusal."""
        variable = self.gateway.config.admin_key_env
        expected = os.environ.get(variable)
        if not expected:
            return error("openai", 403, f"the admin API is off: set {variable}")
        authorization = request.headers.get("authorization", "")
        presented = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        if not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
            return error("openai", 401, "the admin API needs Authorization: Bearer <admin key>")
        return None

    async def list(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        return web.json_response({"keys": [key.describe() for key in self.gateway.keys.list()]})

    async def create(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        tiers = self.gateway.guards
        try:
            fields = json.loads(await request.read())
            if not isinstance(fields, dict):
                raise ValueError("not an object")
            if fields.get("tier") is not None and fields["tier"] not in tiers:
                raise ConfigError(f"no tier {fields['tier']!r}; tiers: {sorted(tiers)}")
            secret, key = self.gateway.keys.create(
                tenant=fields.get("tenant", ""),
                tier=fields.get("tier") or "default",
                team=fields.get("team"),
                user=fields.get("user"),
                models=fields.get("models"),
                expires_at=fields.get("expires_at"),
            )
        except (ValueError, TypeError, RecursionError, ConfigError) as refusal:
            return error("openai", 400, f"cannot create the key: {refusal}")
        return web.json_response({"key": secret, **key.describe()}, status=201)

    async def revoke(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        if not self.gateway.keys.revoke(request.match_info["key_id"]):
            return error("openai", 404, "no live key of that id")
        return web.json_response({"revoked": request.match_info["key_id"]})

    async def rotate(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            secret = self.gateway.keys.rotate(request.match_info["key_id"])
        except KeyError:
            return error("openai", 404, "no live key of that id")
        return web.json_response({"key": secret, "id": request.match_info["key_id"]})
