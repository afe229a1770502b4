"""What counts as Redis being unavailable, and how a failure is told to the user without the
credentials in it.

A server that cannot be used by this client is unavailable to it, whatever the reason: down,
silent past the timeout, a cluster without a master for the slot, credentials it refuses, a
TLS certificate this client does not trust, a read-only replica, or an ACL user without a
permission the script needs. Each is decided by `on_unavailable` and tried again after
`retry_interval` (a password fixed on the server, or a replica promoted, is picked up then).
Errors about one cell (damaged bytes, a key of another type) are not: they raise `StateError`.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["unavailable_errors", "explain", "redact"]


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """The redis-py exceptions that mean the server cannot be used now."""
    import redis
    from redis.exceptions import ClusterDownError, NoPermissionError, ReadOnlyError, TryAgainError

    # AuthenticationError is a ConnectionError.
    return (
        redis.ConnectionError,
        redis.TimeoutError,
        ClusterDownError,
        TryAgainError,
        ReadOnlyError,
        NoPermissionError,
        OSError,
    )


def explain(error: BaseException) -> str:
    """Why the server cannot be used, for an error message or a log line."""
    from redis.exceptions import AuthenticationError, NoPermissionError, ReadOnlyError

    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, AuthenticationError):
        return f"the server refused to authenticate this client (see the user and password of the URL) - {detail}"
    if isinstance(error.__cause__, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate is not trusted (see ssl_ca_certs) - {detail}"
    if isinstance(error, ReadOnlyError):
        return f"the server is a read-only replica: llmthrottle writes to the primary - {detail}"
    if isinstance(error, NoPermissionError):
        return f"the server's ACL denies this user a command or key llmthrottle needs - {detail}"
    return detail


def redact(url: str) -> str:
    """`url` with its password (in the user part, or a `password=` argument) replaced by ***."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"
        query = parts.query
        pairs = parse_qsl(query, keep_blank_values=True)
        if any("password" in name.lower() for name, _ in pairs):
            query = urlencode([(name, "***" if "password" in name.lower() else value) for name, value in pairs])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not a URL redis-py could open either: show nothing of it
        return "<a URL that does not parse>"
