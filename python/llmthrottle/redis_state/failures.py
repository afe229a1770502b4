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
from urllib.parse import unquote, urlsplit

__all__ = ["unavailable_errors", "explain", "redact"]


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """The redis-py exceptions that mean the server cannot be used now."""
    import redis
    from redis.exceptions import (
        ClusterDownError,
        NoPermissionError,
        ReadOnlyError,
        RedisClusterException,
        TryAgainError,
    )

    # AuthenticationError is a ConnectionError; RedisClusterException is a Cluster no node of
    # which could be reached (to read the slot map) or that does not cover a slot.
    return (
        redis.ConnectionError,
        redis.TimeoutError,
        ClusterDownError,
        TryAgainError,
        ReadOnlyError,
        NoPermissionError,
        RedisClusterException,
        OSError,
    )


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and what it was raised from (redis-py wraps socket and TLS errors)."""
    chain = [error]
    while len(chain) < 8 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    return chain


def explain(error: BaseException) -> str:
    """Why the server cannot be used, for an error message or a log line."""
    from redis.exceptions import AuthenticationError, NoPermissionError, ReadOnlyError

    detail = f"{type(error).__name__}: {error}"
    causes = _causes(error)
    if any(isinstance(cause, AuthenticationError) for cause in causes):
        return f"the server refused to authenticate this client (see the user and password of the URL) - {detail}"
    if any(isinstance(cause, ssl.SSLCertVerificationError) for cause in causes):
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
        password = parts.password
    except ValueError:  # not a URL redis-py could open either: show nothing of it
        return "<a URL that does not parse>"
    shown = url
    if password is not None:
        user, _, host = parts.netloc.rpartition("@")
        shown = shown.replace(f"//{parts.netloc}", f"//{user.partition(':')[0]}:***@{host}", 1)
    base, question, rest = shown.partition("?")
    if question:
        query, hash_mark, fragment = rest.partition("#")
        pairs = [
            f"{pair.partition('=')[0]}=***" if "password" in unquote(pair.partition("=")[0]).lower() else pair
            for pair in query.split("&")
        ]
        shown = f"{base}?{'&'.join(pairs)}{hash_mark}{fragment}"
    return shown
