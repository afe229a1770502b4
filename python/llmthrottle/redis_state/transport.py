"""How a script call reaches Redis: the clients, this thread's connection, and the command that
runs decide.lua there.

On a standalone Redis 7 or later a call is an FCALL of llmthrottle's function library (see
`script.LIBRARY`), loaded with FUNCTION LOAD the first time a server answers that the function
is missing (a new server, a restart without persistence, FUNCTION FLUSH) and called again. A
server that has no FUNCTION command (Redis 6), or a user whose ACL refuses it, gets EVALSHA of
the same code instead, loaded again when the server answers NOSCRIPT. A Cluster uses EVALSHA:
redis-py routes it by its first key, where it resolves an FCALL's keys through the server.

A synchronous call goes out on this thread's own connection, packed once per cached call: one
write and one read, no pool to check out from, no retry loop (the state's timeout bounds it).
"""

from __future__ import annotations

import asyncio
import hashlib
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
        from redis.asyncio.retry import Retry as AsyncRetry
        from redis.backoff import NoBackoff
        from redis.cluster import RedisCluster
        from redis.retry import Retry

        from .._native import ConfigError

        once = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
        options = {**once, **options}
        async_options = {**options, "retry": AsyncRetry(NoBackoff(), 0)}
        if not isinstance(url_or_client, str):
            if not hasattr(url_or_client, "evalsha"):
                raise ConfigError(f"RedisState takes a URL or a redis client, not {type(url_or_client).__name__}")
            return cls(url_or_client, isinstance(url_or_client, RedisCluster), None, async_options)
        if cluster:
            return cls(RedisCluster.from_url(url_or_client, **options), True, url_or_client, async_options)
        return cls(redis.Redis.from_url(url_or_client, **options), False, url_or_client, async_options)

    def __init__(self, client: Any, cluster: bool, url: str | None, async_options: dict[str, Any]) -> None:
        from redis.exceptions import NoPermissionError, NoScriptError, ResponseError

        self.client = client
        self.cluster = cluster
        self._url = url
        self._async_options = async_options
        self._no_script, self._response_error, self._no_permission = NoScriptError, ResponseError, NoPermissionError
        self._evalsha = ("EVALSHA", hashlib.sha1(script.SOURCE.encode()).hexdigest())
        # What a call is sent as: replaced (once) by EVALSHA when the server refuses FUNCTION.
        self.head: tuple[str, str] = self._evalsha if cluster else ("FCALL", script.LIBRARY_NAME)
        self._thread = threading.local()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ synchronous

    def send(self, call: script.Call) -> Any:
        """The reply to `call`, loading the code first where the server lacks it."""
        for attempt in range(3):
            head = self.head
            try:
                return self._send(head, call)
            except self._response_error as error:
                load = self._missing(head, error)
                if load is None or attempt == 2:
                    raise
            if load == "function":
                try:
                    self.client.function_load(script.LIBRARY)
                except self._response_error as error:
                    self._function_refused(error)
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
        for attempt in range(3):
            head = self.head
            try:
                return await client.execute_command(*head, len(call.keys), *call.keys, *call.args)
            except self._response_error as error:
                load = self._missing(head, error)
                if load is None or attempt == 2:
                    raise
            if load == "function":
                try:
                    await client.function_load(script.LIBRARY)
                except self._response_error as error:
                    self._function_refused(error)
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

    def _missing(self, head: tuple[str, str], error: BaseException) -> str | None:
        """What to load before trying `head`'s call again: "function", "script", "" (nothing:
        EVALSHA now stands in for FCALL), or None when the error is the call's own."""
        if head[0] == "EVALSHA":
            return "script" if isinstance(error, self._no_script) else None
        message = str(error)
        if message.startswith("Function not found"):
            return "function"
        if "unknown command" in message or isinstance(error, self._no_permission):
            self.head = self._evalsha  # Redis 6, or FCALL denied by the user's ACL
            return ""
        return None

    def _function_refused(self, error: BaseException) -> None:
        """FUNCTION LOAD failed: another process loaded the library first (fine), or the server
        or the user's ACL refuses FUNCTION (then EVALSHA it is)."""
        if "already exists" not in str(error):
            self.head = self._evalsha

    # ------------------------------------------------------------------ lifecycle

    def after_fork(self) -> None:
        """In a forked child: the parent's connections and event loops stay the parent's."""
        self._thread = threading.local()
        self._async = weakref.WeakKeyDictionary()

    def close(self) -> None:
        for connection in list(self._connections):
            connection.disconnect()
        self.client.close()


async def _close_on_shutdown(client: Any) -> Any:
    try:
        yield
    finally:
        await client.aclose()
