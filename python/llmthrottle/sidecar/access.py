"""Who is calling (the kernel's peer credentials of the Unix socket) and which keys they may use.

The socket's mode and group decide who may connect at all. `[access]` in the policy file narrows
that per uid: a uid (or user name) maps to the key patterns it may acquire, commit and query
(`fnmatch` globs, every key of a multi-key call must match). A `"*"` entry covers every uid not
listed. Without an `[access]` table every peer may use every key. Changing the policy itself
(registering a namespace's limits, reloading) needs the pattern `"*"`, or the server's own uid,
or root.
"""

from __future__ import annotations

import fnmatch
import os
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["Peer", "AccessPolicy", "peer_credentials"]

_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_credentials(sock: socket.socket | None) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket; (-1, -1, -1) when the
    kernel cannot tell (not a Unix socket)."""
    if sock is None:
        return (-1, -1, -1)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return (-1, -1, -1)
    pid, uid, gid = _UCRED.unpack(raw)
    return (pid, uid, gid)


@dataclass
class Peer:
    """One connected client: its credentials, what it said about itself, what it may do."""

    pid: int
    uid: int
    gid: int
    may_use: Any  # Callable[[str], bool], or None when unrestricted
    may_admin: bool
    info: dict[str, Any] | None = None

    def check_key(self, key: Any) -> str | None:
        """None when allowed, else the first key this peer may not use."""
        may_use = self.may_use
        if may_use is None:
            return None
        if isinstance(key, str):
            return None if may_use(key) else key
        if isinstance(key, list):
            for item in key:
                if not isinstance(item, str) or not may_use(item):
                    return str(item)
            return None
        return repr(key)


class AccessPolicy:
    """Compiled `[access]` table (None: no restriction)."""

    def __init__(self, access: dict[int, list[str]] | None, default: list[str] | None) -> None:
        self.enabled = access is not None or default is not None
        self._by_uid = {uid: _compile(patterns) for uid, patterns in (access or {}).items()}
        self._admins = {uid for uid, patterns in (access or {}).items() if "*" in patterns}
        # None both when absent and when it is ["*"]; _default_admin tells them apart.
        self._default = _compile(default) if default is not None else None
        self._default_admin = default is not None and "*" in default
        self._own_uid = os.getuid()

    def peer(self, pid: int, uid: int, gid: int) -> Peer:
        """The Peer for these credentials, with its key check compiled once per connection."""
        privileged = uid in (0, self._own_uid)
        if not self.enabled:
            return Peer(pid, uid, gid, None, True)
        if uid in self._by_uid:
            matcher, admin = self._by_uid[uid], uid in self._admins
        elif self._default is not None or self._default_admin:
            matcher, admin = self._default, self._default_admin
        else:
            return Peer(pid, uid, gid, _deny_all, privileged)  # not listed, no "*" entry
        # matcher None: the patterns include "*", every key is allowed.
        return Peer(pid, uid, gid, _cached(matcher), admin or privileged)


def _compile(patterns: list[str]) -> Any:
    if "*" in patterns:
        return None
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return regex.match


def _deny_all(key: str) -> bool:
    return False


def _cached(match: Any) -> Any:
    if match is None:
        return None
    seen: dict[str, bool] = {}

    def may_use(key: str) -> bool:
        # Hot keys repeat: remember answers, bounded so that many distinct keys cannot grow it.
        answer = seen.get(key)
        if answer is None:
            if len(seen) >= 4096:
                seen.clear()
            answer = seen[key] = match(key) is not None
        return answer

    return may_use
