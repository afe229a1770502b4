"""llmthrottle's own errors, raised through an SDK client: an SDK passes on the errors of its
own family as they are and wraps any other exception its transport raises in a connection
error (Anthropic's does, to every exception; OpenAI's, to httpx's). So a wrapped client raises
each llmthrottle error as a subclass of both its own class and the SDK's base error
(`anthropic.AnthropicError`, `openai.OpenAIError`): `except lt.BudgetExceeded` catches it, with
every attribute it carries, whichever SDK it came through."""

from __future__ import annotations

import sys
from typing import Any

from .._native import LlmthrottleError

__all__ = ["as_sdk_error", "sdk_error_base"]

# The SDKs' base errors, by the name of the package that defines them.
_BASES = {"anthropic": "AnthropicError", "openai": "OpenAIError"}

# (llmthrottle error class, SDK base error) -> the class that is both: made once each.
_KINDS: dict[tuple[type[BaseException], type[BaseException]], type[LlmthrottleError]] = {}


def sdk_error_base(client: Any) -> type[Exception] | None:
    """The base error of the SDK `client` belongs to, None for another client."""
    package = type(client).__module__.partition(".")[0]
    module = sys.modules.get(package)
    base = getattr(module, _BASES.get(package, ""), None)
    return base if isinstance(base, type) and issubclass(base, Exception) else None


def as_sdk_error(error: LlmthrottleError, base: type[Exception]) -> LlmthrottleError:
    """`error` as an instance of its class and of `base` too: the same message and attributes,
    raised from the same place."""
    kind = type(error)
    both = _KINDS.get((kind, base))
    if both is None:
        both = _KINDS[(kind, base)] = type(kind.__name__, (kind, base), {"__module__": kind.__module__})
        both.__qualname__ = kind.__qualname__
    # Made as a copy, not constructed: a class may take other arguments than its message.
    raised = both.__new__(both, *error.args)
    raised.args = error.args
    raised.__dict__.update(error.__dict__)
    return raised.with_traceback(error.__traceback__)
