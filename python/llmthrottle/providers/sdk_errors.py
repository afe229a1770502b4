"""llmthrottle's own errors, raised through an Anthropic client. Anthropic's SDK wraps any
exception its transport raises in a connection error, except its own (`AnthropicError`), so a
wrapped Anthropic client raises each llmthrottle error as a subclass of both its own class and
`anthropic.AnthropicError`: `except lt.BudgetExceeded` catches it, with every attribute it
carries, and it pickles as its own class. (OpenAI's SDK passes on what is not an httpx error as
it is: its errors need nothing.)"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from .._native import LlmthrottleError

__all__ = ["as_sdk_error", "raise_through", "sdk_error_base"]

# (llmthrottle error class, SDK base error) -> the class that is both: made once each.
_KINDS: dict[tuple[type[BaseException], type[BaseException]], type[LlmthrottleError]] = {}


def sdk_error_base(client: Any) -> type[Exception] | None:
    """The base error of the SDK `client` belongs to (any of its clients, or a subclass of one),
    when that SDK wraps llmthrottle's errors; None otherwise."""
    anthropic = sys.modules.get("anthropic")
    if anthropic is None or not any(kind.__module__.partition(".")[0] == "anthropic" for kind in type(client).__mro__):
        return None
    base = anthropic.AnthropicError
    return base if isinstance(base, type) and issubclass(base, Exception) else None


def _plain(kind: type[LlmthrottleError], args: tuple[Any, ...], attributes: dict[str, Any]) -> LlmthrottleError:
    """`kind`'s error made from its args and attributes, without calling its constructor (a class
    may take other arguments than its message): how an error raised through an SDK unpickles."""
    error = kind.__new__(kind, *args)
    error.args = args
    error.__dict__.update(attributes)
    return error


def _reduce(error: LlmthrottleError) -> tuple[Any, ...]:
    return (_plain, (type(error).__mro__[1], error.args, dict(error.__dict__)))


def as_sdk_error(error: LlmthrottleError, base: type[Exception]) -> LlmthrottleError:
    """`error` as an instance of its class and of `base` too: the same message and attributes,
    raised from the same place."""
    kind = type(error)
    both = _KINDS.get((kind, base))
    if both is None:
        namespace = {"__module__": kind.__module__, "__qualname__": kind.__qualname__, "__reduce__": _reduce}
        both = _KINDS[(kind, base)] = type(kind.__name__, (kind, base), namespace)
    raised = _plain(both, error.args, error.__dict__)
    return raised.with_traceback(error.__traceback__)


def raise_through(error: LlmthrottleError, base: type[Exception] | None) -> NoReturn:
    """Raises `error`, from a wrapped client's transport, so that its SDK (whose base error is
    `base`, None for one that needs nothing) passes it on as it is."""
    if base is None or isinstance(error, base):
        raise error
    raise as_sdk_error(error, base) from error.__cause__
