"""The sidecar: `llmthrottle serve`, one process per host answering every local process over a
Unix socket (HTTP/JSON and a binary msgpack protocol on the same socket). The server builds
`llmthrottle.Limiter` objects from the policy file and calls them; it re-implements no rule.

Modules: `config` (the policy file), `protocol` (framing, shared with the client), `service` (the
engine and reservations), `binary` and `http_api` (the two protocols), `server` (socket, sniffing,
lifecycle), `access` (peer credentials), `metrics`, `openapi`, `cli` (`llmthrottle serve`).
"""

__all__: list[str] = []
