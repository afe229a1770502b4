"""The gateway's HTTP server: OpenAI- and Anthropic-compatible endpoints in front of the
deployments of `[models]`, every call through the provider layer.

A request is authenticated (`auth.py`), its model alias routed (`routing.py`), and sent to each
candidate deployment in turn through the provider layer's retry loop (`attempts_async`, the one
`lt.wrap` runs) with a Guard holding the caller's tier limits and the budgets: admission, usage,
pricing and the ledger are the provider layer's, with one attempt per deployment so that a 5xx, a
timeout or a 429 fails over to the next one before the first byte reaches the caller. Streams are
relayed as they arrive. An alias may list deployments of either API family: a chat request sent
to the other family's deployment is translated there and back (`translate/`). Denials are
answered in the caller's provider shape, a 429 with Retry-After and the limiter's
`x-ratelimit-*`, so SDK clients back off as they would against the provider.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from .._json import loads
from .._native import BudgetExceeded, ConfigError, ExceedsCapacity, RateLimited
from ..guard import Guard
from ..limiter import Limiter
from ..providers.attribution import context, tagged
from ..providers.cache import ResponseCache
from ..providers.call import CallPlan, Settings
from ..providers.headers import retry_after_s
from ..providers.learned import LearnedLimits
from ..providers.pause import ProviderPause
from ..providers.protocol import Family, error_body
from ..providers.reports import CallReport, calls
from ..providers.transport import attempts_async, ended, passed
from ..request_estimate import InvalidRequestBody, estimate
from . import answers
from .admin import AdminAPI
from .auth import Authenticator, Refused
from .budget_queue import BudgetQueue, Hold
from .config import Deployment, GatewayConfig
from .keys import Caller, KeyStore
from .routing import Router
from .taxonomy import choose_alias
from .translate import Translation, Untranslatable
from .upstream import Upstreams

__all__ = ["Gateway"]

# A URL's port when it names none (left out of a provider's key, as httpx leaves it out).
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Endpoints: path -> (family, the path after the deployment's base URL, which is what the
# provider's SDK takes: OpenAI's ends in /v1, Anthropic's does not)
_ROUTES: dict[str, tuple[Family, str]] = {
    "/v1/chat/completions": ("openai", "/chat/completions"),
    "/v1/responses": ("openai", "/responses"),
    "/v1/embeddings": ("openai", "/embeddings"),
    "/v1/messages": ("anthropic", "/v1/messages"),
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
}
# The endpoints whose requests can be translated to the other family's chat endpoint.
_TRANSLATABLE = frozenset(("/v1/chat/completions", "/v1/messages"))
_MAX_BODY = 32 << 20
# A request as small as any, which `Gateway.warm` counts for each deployment.
_WARM_BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


class Gateway:
    """The gateway's state: its configuration, key store, router, and one Guard per tier."""

    def __init__(self, config: GatewayConfig, *, state: Any = None, ledger: Any = None) -> None:
        self.config = config
        self.upstreams = Upstreams(config)
        self.keys = KeyStore(config.keys_db)
        secret = None
        if config.jwt_secret_env is not None:
            import os

            value = os.environ.get(config.jwt_secret_env)
            if not value:
                raise ConfigError(f"gateway.jwt_secret_env: environment variable {config.jwt_secret_env} is not set")
            secret = value.encode()
        self.auth = Authenticator(
            self.keys, jwt_secret=secret, jwt_audience=config.jwt_audience, jwks_file=config.jwks_file
        )
        self.router = Router(config.models, config.breaker_failures, config.breaker_cooldown_s, config.strategies)
        if state is None:
            from ..sidecar.service import _make_state

            if config.shared.state_kind == "shared" and config.shared.state_name is None:
                config.shared.state_name = f"gateway-{config.port}"  # not the sidecar's default table
            state = _make_state(config.shared)
        self.state = state
        if ledger is None and config.shared.ledger_path is not None:
            from ..ledger import Ledger

            ledger = Ledger(config.shared.ledger_path, group_access=config.shared.ledger_group_access)
        self.ledger = ledger
        self.guards: dict[str, Guard] = {}
        self._settings: dict[str, Settings] = {}
        self._pause, self._learned = ProviderPause(state), LearnedLimits(state)
        self.budget_queue = BudgetQueue(config.budget_queue_max)
        self._apply_tiers(config)
        self.metrics = {"requests": 0, "denied": 0, "upstream_errors": 0, "failovers": 0, "reloads": 0}
        self.deployment_metrics: dict[str, dict[str, int]] = {}

    def _apply_tiers(self, config: GatewayConfig) -> None:
        """One Guard per tier: its limits per virtual key, the budgets on tenant/team/user keys.
        A tier that stays keeps its counters (its limiter's limits are replaced in place)."""
        budgets = config.shared.budgets.get("default", [])
        guards: dict[str, Guard] = {}
        for tier, limits in config.tiers.items():
            guard = self.guards.get(tier)
            if guard is None:
                limiter = Limiter(rules={"key:*": limits}, budgets=budgets, state=self.state, namespace=f"tier.{tier}")
                guard = Guard(limiter, ledger=self.ledger)
            else:
                guard.limiter.set_limits(rules={"key:*": limits}, budgets=budgets)
            guards[tier] = guard
        self.guards = guards
        # One attempt per deployment: failing over is the gateway's retry.
        self._settings = {
            tier: Settings(
                guard=guard,
                pause=self._pause,
                learned=self._learned,
                max_attempts=1,
                deadline_s=config.request_timeout_s,
                admission_timeout_s=config.queue_timeout_s,
                downgrade=True,  # each attempt is sent as `plan.call.model`
            )
            for tier, guard in guards.items()
        }
        # One exact response cache per alias with a cache_ttl, kept across reloads that keep it.
        old = getattr(self, "_caches", {})
        self._caches = {
            alias: old[alias] if alias in old and old[alias].ttl_s == ttl else ResponseCache(ttl_s=ttl)
            for alias, ttl in config.cache_ttls.items()
        }
        # The settings of a (tier, alias) whose alias keeps a cache, made once here.
        self._cached_settings = {
            (tier, alias): replace(settings, cache=cache)
            for tier, settings in self._settings.items()
            for alias, cache in self._caches.items()
        }

    def warm(self) -> None:
        """Loads now what the first request to each deployment would otherwise load on the
        event loop, stopping every request in flight meanwhile: its model's tokenizer (tens of
        milliseconds), counted as admission counts a request."""
        for deployments in self.config.models.values():
            for deployment in deployments:
                try:
                    estimate(_WARM_BODY, deployment.provider, deployment.model)
                except (ConfigError, ValueError):
                    pass  # a model without a tokenizer has none to load

    def reload(self, config: GatewayConfig) -> None:
        """Applies a changed policy file: tiers, budgets, model routes and timeouts (where it
        listens, its keys file and its state need a restart)."""
        self.upstreams = self.upstreams.replaced(config)  # credentials read again
        self._apply_tiers(config)
        self.router.models, self.router.strategies = config.models, config.strategies
        self.budget_queue.max_waiting = config.budget_queue_max
        self.config = replace(
            config,
            host=self.config.host,
            port=self.config.port,
            keys_db=self.config.keys_db,
            shared=replace(
                config.shared, state_kind=self.config.shared.state_kind, state_name=self.config.shared.state_name
            ),
        )
        self.warm()
        self.metrics["reloads"] += 1

    # ------------------------------------------------------------------ the app

    def app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        for path in _ROUTES:
            app.router.add_post(path, self._proxy)
        app.router.add_get("/v1/models", self._models)
        AdminAPI(self).install(app)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app: web.Application) -> None:
        await self.upstreams.close()
        if self.ledger is not None:
            self.ledger.close()
        self.keys.close()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        try:
            caller = self.auth.caller(request.headers)
        except Refused as refused:
            return answers.error("openai", refused.status, refused.message)
        aliases = [a for a in self.router.aliases() if caller.may_use(a)]
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": alias, "object": "model", "created": 0, "owned_by": "llmthrottle"} for alias in aliases
                ],
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        lines = [f"llmthrottle_gateway_{name}_total {value}" for name, value in self.metrics.items()]
        queue = self.budget_queue
        lines.append(f"llmthrottle_gateway_budget_held_total {queue.held_total}")
        lines.append(f"llmthrottle_gateway_budget_queue_full_total {queue.full_total}")
        lines.append(f"llmthrottle_gateway_budget_waiting {queue.waiting}")
        for name, breaker in self.router.breakers.items():
            state = {"closed": 0, "half_open": 1, "open": 2}[breaker.state]
            lines.append(f'llmthrottle_gateway_breaker_state{{deployment="{_label(name)}"}} {state}')
            for counter, value in self.deployment_metrics.get(name, {}).items():
                lines.append(f'llmthrottle_gateway_deployment_{counter}_total{{deployment="{_label(name)}"}} {value}')
            if breaker.latency_s is not None:
                lines.append(
                    f'llmthrottle_gateway_latency_seconds{{deployment="{_label(name)}"}} {breaker.latency_s:.6f}'
                )
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    # ------------------------------------------------------------------ proxying

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        received = time.perf_counter()
        family, suffix = _ROUTES[request.path]
        self.metrics["requests"] += 1
        try:
            caller = self.auth.caller(request.headers)
        except Refused as refused:
            return answers.error(family, refused.status, refused.message)
        try:
            body = loads(await request.read())
        except (ValueError, RecursionError):
            return answers.error(family, 400, "the request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return answers.error(family, 400, "the request names no model")
        alias = choose_alias(self.config.routes, body, request.headers, family) if self.config.routes else body["model"]
        candidates = self.router.candidates(alias)
        if candidates is None:
            return answers.error(family, 404, f"no model {alias!r} on this gateway")
        if not caller.may_use(alias):
            return answers.error(family, 403, f"this key may not use model {alias!r}")
        settings = self._settings.get(caller.tier)
        if settings is None:
            return answers.error(family, 403, f"tier {caller.tier!r} is not configured on this gateway")
        settings = self._cached_settings.get((caller.tier, alias), settings)
        translatable = request.path in _TRANSLATABLE
        candidates = [d for d in candidates if d.provider == family or translatable]
        if not candidates:
            return answers.error(family, 404, f"model {alias!r} has no {family} deployment")
        hold = self.budget_queue.hold(
            self.config.budget_queue_timeouts.get(alias, self.config.budget_queue_timeout_s), lambda: _gone(request)
        )
        with hold:
            return await self._through(
                request, hold, settings, caller, candidates, alias, family, body, suffix, received
            )

    async def _through(
        self,
        request: web.Request,
        hold: Hold,
        settings: Settings,
        caller: Caller,
        candidates: list[Deployment],
        alias: str,
        family: Family,
        body: dict[str, Any],
        suffix: str,
        received: float,
    ) -> web.StreamResponse:
        """The answer of the first deployment that gives one (failing over past the others)."""
        last: web.StreamResponse | None = None
        untranslatable: web.Response | None = None  # the first deployment the request could not be translated for
        tried = 0
        for deployment in candidates:
            translation, sent_body, path = None, body, suffix
            if deployment.provider != family:
                translation = Translation.of(family, deployment.provider, body)
                try:
                    sent_body, path = translation.request(body), translation.path
                except Untranslatable as error:
                    untranslatable = untranslatable or answers.error(
                        family,
                        400,
                        f"model {alias!r}: this request cannot be sent to its {deployment.provider} "
                        f"deployment {deployment.name!r}: {error}",
                    )
                    continue
            if tried:
                self.metrics["failovers"] += 1
            tried += 1
            try:
                answer = await self._send_held(
                    hold, request, settings, caller, deployment, alias, sent_body, path, received, translation
                )
            except (RateLimited, BudgetExceeded) as refusal:
                self.metrics["denied"] += 1
                guard = self.guards.get(caller.tier)  # gone only if a reload dropped the tier meanwhile
                limits = {} if guard is None else answers.limit_headers(family, guard.limiter, f"key:{caller.key_id}")
                return answers.denied(family, refusal, caller.tenant, limits)
            except ExceedsCapacity as too_big:
                return answers.error(family, 400, f"the request can never fit this key's limits: {too_big}")
            except InvalidRequestBody as malformed:
                return answers.error(family, 400, str(malformed))
            if isinstance(answer, web.StreamResponse):
                return answer
            last = answers.from_upstream(*answer)
        if last is None:
            assert untranslatable is not None
            return untranslatable
        return last

    async def _send_held(
        self,
        hold: Hold,
        request: web.Request,
        settings: Settings,
        caller: Caller,
        deployment: Deployment,
        alias: str,
        body: dict[str, Any],
        suffix: str,
        received: float,
        translation: Translation | None,
    ) -> web.StreamResponse | tuple[int, dict[str, str], bytes]:
        """`_send`, asked again while a `queue` budget holds the request (see budget_queue.py)."""
        while True:
            made: list[CallReport] = []
            try:
                with calls() as made:
                    return await self._send(
                        request, settings, caller, deployment, alias, body, suffix, received, translation
                    )
            except BudgetExceeded as denied:
                if not await hold.wait(denied):
                    raise
            finally:
                self._account(deployment, made)

    def _account(self, deployment: Deployment, made: list[CallReport]) -> None:
        """Per-deployment counters for /metrics, from the provider layer's report of each call
        (a call refused before it was sent never reached the deployment)."""
        counters = self.deployment_metrics.setdefault(deployment.name, {"calls": 0, "errors": 0, "cost_micros": 0})
        for report in made:
            if not report.attempts and report.outcome != "cache_hit":
                continue
            counters["calls"] += 1
            counters["errors"] += report.outcome != "ok"
            counters["cost_micros"] += report.cost_micros

    async def _send(
        self,
        request: web.Request,
        settings: Settings,
        caller: Caller,
        deployment: Deployment,
        alias: str,
        body: dict[str, Any],
        suffix: str,
        received: float,
        translation: Translation | None,
    ) -> web.StreamResponse | tuple[int, dict[str, str], bytes]:
        """The relayed answer, or (status, headers, body) of an upstream failure to fail over from
        (the body in the caller's shape). `body` is in the deployment's API: `translation` turns
        what comes back into the caller's."""
        family: Family = translation.caller if translation is not None else deployment.provider
        outgoing = {**body, "model": deployment.model}
        content = json.dumps(outgoing, separators=(",", ":")).encode()
        url, headers = self.upstreams.target(deployment, suffix)
        headers = {**headers, "accept": request.headers.get("accept", "application/json")}
        if deployment.provider == "anthropic":
            headers["anthropic-version"] = request.headers.get("anthropic-version", "2023-06-01")
            if "anthropic-beta" in request.headers:
                headers["anthropic-beta"] = request.headers["anthropic-beta"]
        plan = CallPlan.start(
            settings,
            "POST",
            url.host or "",
            url.path,
            headers,
            content,
            cache_scope=caller.tenant,
            parsed=outgoing,
            port=None if url.port == _DEFAULT_PORTS.get(url.scheme) else url.port,
        )
        assert plan is not None  # every route is an LLM endpoint with a model
        session = self.upstreams.client()
        fields = {"tenant": caller.tenant, "key": caller.key_id}
        if caller.team:
            fields["team"] = caller.team
        if caller.user:
            fields["user"] = caller.user
        # When the request left, once admitted: the wait for the tier's limits is the gateway's
        # time (in x-llmthrottle-overhead-ms), not the deployment's (in its moving latency).
        sent = 0.0

        async def send() -> aiohttp.ClientResponse:
            nonlocal sent
            # A budget at its end with on_exceed = "downgrade" admitted the call for its cheaper
            # model: that is the model the deployment is asked for.
            model = plan.call.model if plan.call is not None else deployment.model
            data = (
                plan.content
                if model == deployment.model
                else json.dumps({**plan.body, "model": model}, separators=(",", ":")).encode()
            )
            sent = time.perf_counter()
            return await session.post(url, data=data, headers=headers)

        async def drain(answer: aiohttp.ClientResponse) -> bytes:
            data = await answer.read()
            answer.release()
            return data

        with context(**fields), tagged(deployment=deployment.name, route=alias, tier=caller.tier):
            hit = plan.cached_reply()
            if hit is not None:
                answer_headers = {"content-type": hit.content_type, "x-llmthrottle-cache": "hit"}
                # The cache keeps the deployment's reply, whichever API asked.
                status, content = _in_callers_api(translation, hit.status, hit.content)
                cached = web.Response(status=status, body=content, headers=answer_headers)
                cached.headers["x-llmthrottle-overhead-ms"] = f"{(time.perf_counter() - received) * 1000:.3f}"
                return cached
            try:
                answer, failure = await attempts_async(
                    plan,
                    send,
                    lambda a: (a.status, a.headers),
                    drain,
                    (aiohttp.ClientError, asyncio.TimeoutError, OSError),
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                self.metrics["upstream_errors"] += 1
                self.router.failed(deployment)
                message = f"upstream {deployment.name} unreachable: {type(error).__name__}"
                return 502, {}, json.dumps(error_body(family, 502, message)).encode()
        answered = time.perf_counter()
        if failure is not None:
            self.metrics["upstream_errors"] += 1
            if translation is not None:
                failure = translation.error(answer.status, failure)
            if answer.status == 429:
                self.router.cool_down(deployment, retry_after_s(answer.headers) or 1.0)
            elif answer.status >= 500:
                self.router.failed(deployment)
            else:  # the caller's own mistake: no other deployment would answer better
                return await self._relay(request, answer, plan, failure, received, sent, answered, None)
            return answer.status, dict(answer.headers), failure
        self.router.succeeded(deployment, answered - sent)
        return await self._relay(request, answer, plan, None, received, sent, answered, translation)

    async def _relay(
        self,
        request: web.Request,
        answer: aiohttp.ClientResponse,
        plan: CallPlan,
        data: bytes | None,
        received: float,
        sent: float,
        answered: float,
        translation: Translation | None,
    ) -> web.StreamResponse:
        """The answer to the caller: `data`, an error body already read, or the deployment's
        reply as it arrives (in the caller's API through `translation`)."""
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        if data is None and not (plan.streaming and plan.streams_reply(answer.headers.get("content-type"))):
            # A whole reply: read it, settle the call, and answer in one write.
            try:
                whole = await answer.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                # Cut off after its status: billed, so charged at its worst case, and not sent
                # again to another deployment.
                plan.cut_off(error)
                self.metrics["upstream_errors"] += 1
                family = translation.caller if translation is not None else plan.endpoint.family
                return answers.error(family, 502, f"the deployment's reply was cut off: {type(error).__name__}")
            except BaseException as error:  # the caller went away: the handler was cancelled
                plan.cut_off(error)
                raise
            finally:
                answer.release()
            plan.settle_whole(whole)
            status, body = _in_callers_api(translation, answer.status, whole)
            out: web.StreamResponse = web.Response(status=status, headers=headers, body=body)
            out.headers["x-llmthrottle-overhead-ms"] = answers.overhead_ms(received, sent, answered)
            return out
        reader = plan.reader()
        out = web.StreamResponse(status=answer.status, headers=headers)
        out.headers["x-llmthrottle-overhead-ms"] = answers.overhead_ms(received, sent, answered)
        stream = translation.stream() if translation is not None and data is None else None
        try:
            await out.prepare(request)
            if data is not None:
                await out.write(data)
            else:
                # Usage is read from the bytes as they pass; the call is settled at the end, or
                # with what was received when either side goes away half-way.
                async for chunk in answer.content.iter_any():
                    kept = passed(plan, reader, chunk)
                    if stream is not None:
                        kept = stream.feed(kept)
                    if kept:
                        await out.write(kept)
                tail = ended(plan, reader)
                if stream is not None:
                    tail = stream.feed(tail) + stream.finish()
                if tail:
                    await out.write(tail)
            await out.write_eof()
        finally:
            answer.release()
            if data is None:
                plan.settle(reader)  # a no-op once the stream ended
        return out


def _gone(request: web.Request) -> bool:
    """Whether the caller of `request` went away."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _in_callers_api(translation: Translation | None, status: int, body: bytes) -> tuple[int, bytes]:
    """A whole successful reply of the deployment as the caller's API writes it (a reply that
    cannot be written so is a 502: the call was made and is in the ledger)."""
    if translation is None:
        return status, body
    try:
        return status, translation.reply(body)
    except Untranslatable as error:
        return 502, json.dumps(error_body(translation.caller, 502, str(error))).encode()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
