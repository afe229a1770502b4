"""How the gateway reaches its deployments: one HTTP client per process, and for each deployment
its URLs and the headers every request to it carries (its credential, read from the environment
once per policy: a credential missing from the environment stops the gateway at start or fails
a reload, rather than answering each call with a 500)."""

from __future__ import annotations

import aiohttp
from yarl import URL

from .config import Deployment, GatewayConfig

__all__ = ["Upstreams"]


class Upstreams:
    """The deployments of one policy, as the gateway's client sends to them."""

    def __init__(self, config: GatewayConfig) -> None:
        for deployments in config.models.values():
            for deployment in deployments:
                deployment.api_key()  # a ConfigError naming the variable when it is not set
        self._timeout_s = config.request_timeout_s
        self._client: aiohttp.ClientSession | None = None
        self._targets: dict[tuple[Deployment, str], tuple[URL, dict[str, str]]] = {}

    def replaced(self, config: GatewayConfig) -> Upstreams:
        """The upstreams of a reloaded policy, keeping this one's client and its connections."""
        fresh = Upstreams(config)
        fresh._client = self._client
        return fresh

    def client(self) -> aiohttp.ClientSession:
        """This process's client to the deployments (made in the serving event loop)."""
        if self._client is None:
            # Connections are kept, not churned: no cap on how many, a minute of keep-alive. A
            # cookie an upstream sets is no caller's: none is kept.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0)
            self._client = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._client

    def target(self, deployment: Deployment, path: str) -> tuple[URL, dict[str, str]]:
        """The URL of `path` at `deployment` and the headers every request to it carries."""
        found = self._targets.get((deployment, path))
        if found is None:
            headers = {"content-type": "application/json", "accept-encoding": "identity"}
            if deployment.provider == "anthropic":
                headers["x-api-key"] = deployment.api_key()
            else:
                headers["authorization"] = f"Bearer {deployment.api_key()}"
            found = self._targets[(deployment, path)] = (URL(deployment.base_url + path), headers)
        return found

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
