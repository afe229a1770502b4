"""Cross-family routing: an OpenAI chat request sent to an Anthropic deployment, or an Anthropic
Messages request sent to an OpenAI one, and the reply brought back in the caller's API.

`request.py` translates the request body, `reply.py` a whole reply, its usage and error bodies,
`stream.py` a stream event by event as it arrives. All are pure: the gateway sends the translated
request through the provider layer as a call to the deployment actually used (so admission,
usage, pricing and the ledger are that deployment's: its provider, its model, its usage), then
translates what the caller receives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..._json import loads
from ...providers.protocol import Family
from .common import Untranslatable
from .reply import anthropic_message, error_as, openai_completion
from .request import DEFAULT_MAX_TOKENS, anthropic_to_openai, openai_to_anthropic
from .stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream, StreamTranslator

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "StreamTranslator",
    "Translation",
    "Untranslatable",
    "anthropic_message",
    "anthropic_to_openai",
    "openai_completion",
    "openai_to_anthropic",
]

#: The path (after a deployment's base URL) of each family's chat endpoint, the only one
#: translated: Chat Completions and Messages.
CHAT_PATHS: dict[Family, str] = {"openai": "/chat/completions", "anthropic": "/v1/messages"}


@dataclass(frozen=True)
class Translation:
    """A caller of one family talking to a deployment of the other, for one request."""

    caller: Family
    upstream: Family
    # What the caller asked for that the translated stream must honour itself.
    include_usage: bool = False

    @classmethod
    def of(cls, caller: Family, upstream: Family, body: dict[str, Any]) -> Translation:
        options = body.get("stream_options")
        include = caller == "openai" and isinstance(options, dict) and bool(options.get("include_usage"))
        return cls(caller, upstream, include)

    @property
    def path(self) -> str:
        return CHAT_PATHS[self.upstream]

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The caller's request body in the deployment's API (raises Untranslatable)."""
        return openai_to_anthropic(body) if self.caller == "openai" else anthropic_to_openai(body)

    def reply(self, data: bytes) -> bytes:
        """A whole successful reply in the caller's API (raises Untranslatable)."""
        try:
            decoded = loads(data)
        except (ValueError, RecursionError):
            raise Untranslatable("the deployment's reply is not JSON") from None
        if not isinstance(decoded, dict):
            raise Untranslatable("the deployment's reply is not a JSON object")
        translated = openai_completion(decoded) if self.caller == "openai" else anthropic_message(decoded)
        return json.dumps(translated, separators=(",", ":"), ensure_ascii=False).encode()

    def error(self, status: int, data: bytes) -> bytes:
        """An error body of the deployment in the caller's shape."""
        return error_as(self.caller, status, data)

    def stream(self) -> StreamTranslator:
        """A translator for this request's stream."""
        return AnthropicToOpenAIStream(self.include_usage) if self.caller == "openai" else OpenAIToAnthropicStream()
