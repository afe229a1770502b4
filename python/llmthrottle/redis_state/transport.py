"""How a script call reaches Redis: the clients, this thread's connection, and the command that
runs decide.lua there.

On a standalone Redis 7 or later a call is an FCALL of llmthrottle's function library (see
`script.LIBRARY`), loaded with FUNCTION LOAD the first time a server answers that the function
is missing (a new server, a restart without persistence, FUNCTION FLUSH) and called again. A
server that has no FUNCTION command (Redis 6), or a user whose ACL refuses it, gets EVALSHA of
the same code instead, loaded again when the server answers NOSCRIPT. A Cluster uses EVALSHA:
redis-py routes it by its first key, where it resolves an FCALL's keys through the server. A
read-only replica refuses the FCALL and is sent the EVALSHA, which it serves up to the first
write (so `status` reads there, and a decision is refused: the state calls that unavailable).

A synchronous call goes out on this thread's own connection, packed once per cached call: one
write and one read, no pool to check out from, no retry loop (the state's timeout bounds it).

A URL's clients connect at their first call, never when built. A Cluster's client reads the
slot map from a node when it is made, so it is made by the first call that needs it: building a
state never waits on Redis nor fails for it. The options (credentials come in the URL; TLS's
`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`) go to every client, sync and async alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import weakref
from typing import Any

from . import script

__all__ = ["Transport"]


class Transport:
    """Sends script calls; raises redis-py's errors (the state decides what they mean)."""

    @classmethod
    def open(cls, url_or_client: Any, cluster: bool, timeout: float, options: dict[str, Any]) -> Transport:
        """A transport on a URL (a Cluster when `cluster`) or on a redis-py client object. A URL's
        clients make one attempt per call, bounded by `timeout` (on_unavailable takes over)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.cluster import RedisCluster
        from redis.retry import Retry

        from .._native import ConfigError

        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            path = options.get(name)
            if path is not None and not (isinstance(path, (str, os.PathLike)) and os.path.isfile(path)):
                raise ConfigError(f"{name} must be the path of an existing PEM file, not {path!r}")
        once = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
        options = {**once, **options}
        if not isinstance(url_or_client, str):
            if not hasattr(url_or_client, "evalsha"):
                raise ConfigError(f"RedisState takes a URL or a redis client, not {type(url_or_client).__name__}")
            return cls(url_or_client, isinstance(url_or_client, RedisCluster), None, options)
        if cluster:
            return cls(None, True, url_or_client, options)  # made at the first call
        return cls(redis.Redis.from_url(url_or_client, **options), False, url_or_client, options)

    def __init__(self, client: Any, cluster: bool, url: str | None, options: dict[str, Any]) -> None:
        from redis.asyncio.retry import Retry as AsyncRetry
        from redis.backoff import NoBackoff
        from redis.exceptions import NoPermissionError, NoScriptError, ReadOnlyError, ResponseError

        self._client = client
        self.cluster = cluster
        self._url = url
        self._options = options
        self._connecting = threading.Lock()
        self._no_script, self._response_error, self._no_permission = NoScriptError, ResponseError, NoPermissionError
        self._read_only = ReadOnlyError
        self._evalsha = ("EVALSHA", hashlib.sha1(script.SOURCE.encode()).hexdigest())
        # What a call is sent as: replaced (once) by EVALSHA when the server refuses FUNCTION.
        self.head: tuple[str, str] = self._evalsha if cluster else ("FCALL", script.LIBRARY_NAME)
        self._thread = threading.local()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._async_options = {**options, "retry": AsyncRetry(NoBackoff(), 0)}
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    @property
    def client(self) -> Any:
        """The synchronous redis-py client; a Cluster's is made here the first time (raises
        redis-py's errors while no node of it can be reached)."""
        if self._client is None:
            from redis.cluster import RedisCluster

            assert self._url is not None  # a client object given by the caller is never None
            with self._connecting:
                if self._client is None:
                    self._client = RedisCluster.from_url(self._url, **self._options)
        return self._client

    @property
    def made(self) -> bool:
        """Whether the client exists yet (a Cluster's waits for the first call)."""
        return self._client is not None

    # ------------------------------------------------------------------ synchronous

    def send(self, call: script.Call) -> Any:
        """The reply to `call`, loading the code first where the server lacks it."""
        head = self.head
        for attempt in range(3):
            try:
                return self._send(head, call)
            except self._response_error as error:
                step = self._next(head, error)
                if step is None or attempt == 2:
                    raise
            load, head = step
            if load == "function":
                try:
                    self.client.function_load(script.LIBRARY)
                except self._response_error as error:
                    head = self._function_refused(error, head)
            elif load == "script":
                self.client.script_load(script.SOURCE)
        raise AssertionError("unreachable")

    def _send(self, head: tuple[str, str], call: script.Call) -> Any:
        if self.cluster:
            return self.client.execute_command(*head, len(call.keys), *call.keys, *call.args)
        connection = getattr(self._thread, "connection", None)
        if connection is None:  # (a forked child starts with a new threading.local)
            connection = self._thread.connection = self.client.connection_pool.make_connection()
            self._connections.add(connection)
        packed = call.packed
        if packed is None or packed[0] is not head:
            command = b"".join(connection.pack_command(*head, len(call.keys), *call.keys, *call.args))
            packed = call.packed = (head, (command,))
        try:
            connection.send_packed_command(packed[1])
            return connection.read_response()
        except self._response_error:
            raise
        except BaseException:
            connection.disconnect()  # a reply may still be on its way: never read it as another's
            raise

    # ------------------------------------------------------------------ asyncio

    @property
    def runs_async(self) -> bool:
        """Whether `send_async` has an asyncio client: not for a client object given by the
        caller, nor for a Cluster (their calls run the synchronous client in a thread)."""
        return self._url is not None and not self.cluster

    async def send_async(self, call: script.Call) -> Any:
        """`send` for asyncio, on this event loop's client (see `runs_async`)."""
        client = await self._async_client()
        head = self.head
        for attempt in range(3):
            try:
                return await client.execute_command(*head, len(call.keys), *call.keys, *call.args)
            except self._response_error as error:
                step = self._next(head, error)
                if step is None or attempt == 2:
                    raise
            load, head = step
            if load == "function":
                try:
                    await client.function_load(script.LIBRARY)
                except self._response_error as error:
                    head = self._function_refused(error, head)
            elif load == "script":
                await client.script_load(script.SOURCE)
        raise AssertionError("unreachable")

    async def _async_client(self) -> Any:
        """This event loop's asyncio client."""
        assert self._url is not None
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self._url, **self._async_options)
            # The loop closes its async generators before it closes (asyncio.run does): this one
            # then closes the client's connections while the loop can still run them.
            closer = _close_on_shutdown(client)
            await closer.__anext__()
            entry = self._async[loop] = (client, closer)
        return entry[0]

    # ------------------------------------------------------------------ the code on the server

    def _next(self, head: tuple[str, str], error: BaseException) -> tuple[str, tuple[str, str]] | None:
        """After `head`'s call failed with `error`: what to load ("function", "script" or ""
        for nothing) and what to send the call as next, or None when the error is the call's own
        (a damaged cell, an unavailable server)."""
        if head[0] == "EVALSHA":
            return ("script", head) if isinstance(error, self._no_script) else None
        if isinstance(error, self._read_only):
            # A read-only replica refuses a function that may write before it runs; it runs a
            # script up to its first write, so this call goes as EVALSHA: reads (status) are
            # served there and writes refused, as on any server (FCALL stays for the primary).
            return "", self._evalsha
        message = str(error)
        if message.startswith("Function not found"):
            return "function", head
        # Redis 6, or FCALL denied by the user's ACL (an ACL that denies the keys is no reason:
        # EVALSHA is refused them too, and the state calls that unavailable).
        denied = isinstance(error, self._no_permission) and "'fcall'" in message.lower()
        if "unknown command" in message or denied:
            self.head = self._evalsha
            return "", self.head
        return None

    def _function_refused(self, error: BaseException, head: tuple[str, str]) -> tuple[str, str]:
        """FUNCTION LOAD failed; what to send the call as next. Another process loaded the
        library first (FCALL again); the server is a read-only replica (this call as EVALSHA,
        see `_next`); or the server or the user's ACL refuses FUNCTION (EVALSHA from now on)."""
        if isinstance(error, self._read_only):
            return self._evalsha
        if "already exists" in str(error):
            return head
        self.head = self._evalsha
        return self.head

    # ------------------------------------------------------------------ lifecycle

    def after_fork(self) -> None:
        """In a forked child: the parent's connections and event loops stay the parent's."""
        self._thread = threading.local()
        self._async = weakref.WeakKeyDictionary()
        self._connecting = threading.Lock()

    def close(self) -> None:
        for connection in list(self._connections):
            connection.disconnect()
        if self._client is not None:
            self._client.close()


async def _close_on_shutdown(client: Any) -> Any:
    try:
        yield
    finally:
        await client.aclose()
