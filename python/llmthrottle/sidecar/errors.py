"""The sidecar's error contract, in one table: every kind of error answer, the exception the
client raises for it, its HTTP status, and the attributes that travel with it.

The service names an exception's kind with `kind_of`, both protocols send `details_of` beside
the message (binary: `[kind, message, details]`, HTTP: `{"error", "message", "details"}`), and
the client rebuilds the exception with `exception_for`, so that `except lt.ExceedsCapacity as e:
e.dimension` works the same in-process and over the socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._native import (
    BudgetExceeded,
    ConfigError,
    ExceedsCapacity,
    InvalidInput,
    InvalidType,
    LlmthrottleError,
    RateLimited,
    StateError,
)

__all__ = [
    "ERRORS",
    "AccessDenied",
    "ErrorKind",
    "InvalidType",
    "RemoteError",
    "ServiceError",
    "details_of",
    "exception_for",
    "http_status",
    "kind_of",
]


class ServiceError(LlmthrottleError):
    """A request the service refuses; `kind` names its row in `ERRORS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class AccessDenied(LlmthrottleError, PermissionError):
    """The peer's uid may not use a key (see the sidecar's `[access]` rules)."""


class RemoteError(LlmthrottleError):
    """An error answer whose kind has no exception class of its own (kind in `.kind`)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ErrorKind:
    """One kind of error answer."""

    name: str
    http_status: int
    #: What the client raises; None: `RemoteError` with this kind.
    exception: type[BaseException] | None
    #: Attributes of the exception that travel with the answer.
    attributes: tuple[str, ...] = ()
    #: What the client raises when it is not `exception` itself (a builtin the server matched).
    raised_as: type[BaseException] | None = None


# Most specific first: `kind_of` takes the first row whose exception the error is.
ERRORS: dict[str, ErrorKind] = {
    kind.name: kind
    for kind in (
        ErrorKind("RateLimited", 429, RateLimited, ("retry_after", "limited_by", "key")),
        ErrorKind("ExceedsCapacity", 422, ExceedsCapacity, ("key", "dimension", "requested", "capacity")),
        ErrorKind("BudgetExceeded", 429, BudgetExceeded, ("budget", "key", "retry_after", "downgrade_to")),
        ErrorKind("ConfigError", 400, ConfigError),
        ErrorKind("StateError", 503, StateError),
        ErrorKind("AccessDenied", 403, AccessDenied),
        ErrorKind("UnknownNamespace", 404, None),  # not in the policy file and never registered
        ErrorKind("UnknownReservation", 404, None),  # settled, expired, another uid's, or a previous server's
        ErrorKind("BadRequest", 400, None),  # malformed request: wrong shape, unknown op
        ErrorKind("Overloaded", 503, None),  # a server-side cap was reached (reservations held)
        ErrorKind("InvalidInput", 400, InvalidInput),
        ErrorKind("InvalidType", 400, InvalidType),
        ErrorKind("LlmthrottleError", 409, LlmthrottleError),
        ErrorKind("ValueError", 400, ValueError, raised_as=InvalidInput),
        ErrorKind("TypeError", 400, TypeError, raised_as=InvalidType),
        ErrorKind("InternalError", 500, None),
    )
}
_BY_CLASS = [(kind.exception, name) for name, kind in ERRORS.items() if kind.exception is not None]


def kind_of(error: BaseException) -> str:
    """The name of the row an exception raised while handling a request answers with."""
    if isinstance(error, ServiceError):
        return error.kind
    for cls, name in _BY_CLASS:
        if isinstance(error, cls):
            return name
    return "InternalError"


def http_status(kind: str) -> int:
    row = ERRORS.get(kind)
    return row.http_status if row is not None else 500


def _wire_value(value: Any) -> Any:
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, (list, tuple)):
        return [_wire_value(v) for v in value]
    label = getattr(value, "label", None)  # a Budget travels as its label
    return label if isinstance(label, str) else str(value)


def details_of(error: BaseException, kind: str) -> dict[str, Any]:
    """The attributes of `error` its kind carries over the wire (only those it has)."""
    row = ERRORS.get(kind)
    if row is None:
        return {}
    return {name: _wire_value(getattr(error, name)) for name in row.attributes if hasattr(error, name)}


def exception_for(kind: Any, message: Any, details: Any = None) -> BaseException:
    """The exception an error answer stands for, with the attributes that came with it."""
    row = ERRORS.get(kind) if isinstance(kind, str) else None
    if row is None or row.exception is None:
        return RemoteError(str(kind), str(message))
    error = (row.raised_as or row.exception)(str(message))
    if isinstance(details, dict):
        for name in row.attributes:
            if name in details:
                setattr(error, name, details[name])
    return error
