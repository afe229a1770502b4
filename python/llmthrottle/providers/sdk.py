"""`lt.wrap(client)`: an OpenAI or Anthropic SDK client whose every LLM request goes through
llmthrottle (admission at worst case, retries as the provider asks, usage priced and recorded)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import httpx2

from .._native import ConfigError
from ..guard import Guard
from ..limiter import Limiter
from .cache import ResponseCache
from .call import KeysOption, Settings
from .learned import LearnedLimits
from .models import check_model_of
from .pause import ProviderPause
from .sdk_errors import sdk_error_base
from .transport import AsyncThrottledTransport, ThrottledTransport

__all__ = ["wrap"]

_Client = TypeVar("_Client")


def wrap(
    client: _Client,
    *,
    guard: Guard | None = None,
    limiter: Limiter | None = None,
    state: Any = None,
    keys: KeysOption = None,
    max_attempts: int = 6,
    deadline_s: float = 600.0,
    max_retry_after_s: float = 120.0,
    include_stream_usage: bool = True,
    max_request_tokens: int | None = None,
    trim_to_fit: bool = False,
    cache: ResponseCache | None = None,
    model_of: Mapping[str, str] | None = None,
) -> _Client:
    """A client of the same type as `client` (`openai.OpenAI`, `openai.AsyncOpenAI`,
    `openai.AzureOpenAI`, `anthropic.Anthropic`, `anthropic.AsyncAnthropic`) whose LLM calls
    (chat completions, responses, embeddings, messages; streaming or not) go through llmthrottle:

    - admitted before they leave, at their worst case (`lt.estimate` of the body), against the
      limits and budgets of `guard` (or of `limiter`, without budgets or a ledger), under `keys`
      (a list, or a callable of the request body) plus the keys of the enclosing `lt.context`;
    - retried by llmthrottle alone (the SDK's own retries are turned off): a 429 waits out the
      provider's Retry-After (capped at `max_retry_after_s`), overload and server errors back off
      with full jitter, at most `max_attempts` attempts within `deadline_s` seconds (no wait or
      retry starts past it; an attempt on its way is bounded by the SDK's own `timeout`); out of
      credit, spend limits and other 4xx are returned at once. Every attempt is admitted;
    - reconciled with the usage in the reply (for OpenAI streams `stream_options.include_usage`
      is added, and the extra chunk hidden, unless `include_stream_usage=False`), priced and
      recorded in the guard's ledger with its outcome, attempts and seconds waited; a stream
      abandoned half-way is settled with its input and what was received, and a whole reply
      cut off after its status (billed by the provider) at its worst case. A reply nothing
      reads (no guard, cache or `lt.calls()` block, and an OpenAI limit that counts the output
      reservation whole) reaches the caller as the SDK asked for it, unread;
    - admitted against the limits the provider announced in its headers (requests and tokens per
      minute per provider, API key and model), shared by every process on the same `state`;
    - paused, with every process on the same `state` (default: the guard's, else this process),
      when the provider answers 429 or announces a limit used up, until the provider's reset
      (at most `max_retry_after_s`): one worker's 429 never becomes every worker's;
    - capped, with `max_request_tokens`: a request whose input plus output reservation counts
      more is refused before it is sent (`lt.RequestTooLarge`), or with `trim_to_fit=True` loses
      its oldest conversation turns (never system messages, never the last one) until it fits;
    - answered from `cache` (an `lt.ResponseCache`), when given, for a non-streaming request
      identical to one already answered with the same model and API key: not sent, not admitted,
      recorded at $0 with outcome `cache_hit`.

    Azure OpenAI (`openai.AzureOpenAI`, `openai.AsyncAzureOpenAI`, or `openai.OpenAI` on an
    Azure `/openai/v1` URL) is throttled per deployment: the provider's limits and pauses are
    kept per deployment and api-key (every Entra ID token sharing one), and its requests are
    counted as the model the request names. A deployment named otherwise than its model is
    mapped with `model_of={"chat-prod": "gpt-4o"}`; each reply is priced and recorded as the
    model Azure says answered, tagged `azure_deployment`.

    llmthrottle's errors (`lt.RateLimited`, `lt.BudgetExceeded`, `lt.ExceedsCapacity`,
    `lt.RequestTooLarge`) come through either SDK as themselves, never wrapped in a connection
    error (through Anthropic's, each is also an `anthropic.AnthropicError`, which that SDK passes
    on; it pickles as its own class).

    The returned client shares `client`'s connection pool and transport: calls made through
    `client` itself are throttled too, and no error answer llmthrottle hands back is retried by
    the SDK (it says `x-should-retry: false`), whatever `max_retries` a client sharing the
    transport was given. A connection error that ends llmthrottle's retries is still retried by
    an SDK whose own retries are on, each time through llmthrottle's loop again: use the
    returned client, whose retries are off.
    """
    if max_request_tokens is not None and (
        isinstance(max_request_tokens, bool) or not isinstance(max_request_tokens, int) or max_request_tokens < 1
    ):
        raise ConfigError(f"max_request_tokens must be a positive int, not {max_request_tokens!r}")
    model_of = check_model_of(model_of)
    if guard is None and limiter is not None:
        guard = Guard(limiter)
    if state is None and guard is not None:
        state = guard.limiter.state
    settings = Settings(
        guard=guard,
        pause=ProviderPause(state),
        learned=LearnedLimits(state),
        keys=keys,
        max_attempts=max_attempts,
        deadline_s=deadline_s,
        max_retry_after_s=max_retry_after_s,
        include_stream_usage=include_stream_usage,
        max_request_tokens=max_request_tokens,
        trim_to_fit=trim_to_fit,
        cache=cache,
        model_of=model_of,
        sdk_error=sdk_error_base(client),
    )
    with_options = getattr(client, "with_options", None)
    http_client = getattr(client, "_client", None)
    if with_options is None or not isinstance(http_client, (httpx2.Client, httpx2.AsyncClient)):
        raise TypeError(f"lt.wrap takes an OpenAI or Anthropic SDK client, not {type(client).__name__}")
    wrapped = with_options(max_retries=0)
    inner = wrapped._client._transport
    if isinstance(inner, (ThrottledTransport, AsyncThrottledTransport)):
        inner = inner.inner  # wrapping twice replaces the settings, never stacks two loops
    if isinstance(wrapped._client, httpx2.AsyncClient):
        wrapped._client._transport = AsyncThrottledTransport(inner, settings)
    else:
        wrapped._client._transport = ThrottledTransport(inner, settings)
    return wrapped  # type: ignore[no-any-return]
