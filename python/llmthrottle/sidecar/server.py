"""The sidecar server: one Unix socket, two protocols, one engine.

How both protocols share the socket: `loop.create_unix_server` is given our own protocol
factory (`_Sniffer`). A new connection's first bytes decide who handles it:

- `protocol.MAGIC` (b"LTMP\\x01"): the rest of the stream goes to a `BinaryConnection`
  (`transport.set_protocol`), which answers msgpack frames synchronously; no HTTP machinery.
- anything else: the connection is handed to aiohttp. `web.AppRunner.setup()` builds a
  low-level `web.Server`, which is itself the protocol factory aiohttp's own sites use:
  `runner.server()` returns a `RequestHandler` (an asyncio Protocol). We give it the transport
  (`connection_made`) and the bytes already read (`data_received`), then make it the
  transport's protocol. aiohttp then owns the connection exactly as if its UnixSite had
  accepted it, and `runner.cleanup()` shuts those connections down gracefully.

Dropped designs: a separate socket per protocol (two paths to configure and secure); reading
the magic with asyncio streams first (a task per connection and a copy of every byte).
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import grp
import logging
import os
import signal
import socket
import stat
import time
from typing import Any

from aiohttp import web

from .._native import ConfigError, LlmthrottleError
from .access import AccessPolicy, peer_credentials
from .binary import BinaryConnection
from .config import SidecarConfig, load_config
from .http_api import make_app
from .metrics import Metrics
from .protocol import MAGIC
from .service import Service

__all__ = ["SidecarServer", "ServerAlreadyRunning", "bind_unix_socket"]

_log = logging.getLogger("llmthrottle.sidecar")
_SWEEP_INTERVAL_S = 1.0
# Reservations expired per turn of the event loop: a mass expiry never stalls it for long.
_EXPIRE_SLICE = 2000
# Settings a reload reads but cannot apply to a running server: they wait for a restart.
_RESTART_ONLY = (
    "socket",
    "socket_mode",
    "socket_group",
    "state_kind",
    "state_name",
    "state_capacity",
    "state_url",
    "state_redis_options",
    "ledger_path",
    "ledger_group_access",
)


class ServerAlreadyRunning(LlmthrottleError, RuntimeError):
    """Another server answers on the socket (or holds its lock)."""


def bind_unix_socket(path: str, mode: int, group: str | None) -> tuple[socket.socket, int]:
    """A listening-ready socket bound at `path` with `mode` and `group`, and the fd of the lock
    file `path + ".lock"` held for the server's lifetime.

    The lock serialises servers starting at once; then a leftover socket file is probed: if
    something answers we refuse, if nothing does (a crashed server) we unlink it. A path that
    exists and is not a socket is never removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise ServerAlreadyRunning(f"another llmthrottle server holds {path}.lock") from None
    try:
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except (TimeoutError, ConnectionRefusedError, FileNotFoundError):
                _log.info("removing stale socket %s (nothing answers on it)", path)
                os.unlink(path)
            else:
                raise ServerAlreadyRunning(f"a server is already answering on {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under a umask that already excludes what `mode` excludes, so the socket is
        # never reachable with wider permissions, even for an instant.
        previous = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(previous)
        os.chmod(path, mode)
        if group is not None:
            try:
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
            except KeyError:
                sock.close()
                os.unlink(path)
                raise ConfigError(f"server.socket_group: no such group {group!r}") from None
        return sock, lock_fd
    except BaseException:
        os.close(lock_fd)
        raise


def _tune_gc() -> None:
    """Tunes the cyclic collector for the server's own process, whose garbage reference
    counting frees almost entirely. What exists once the server is up (modules, aiohttp's app, the policy, the limiters)
    lives as long as the server, so it is frozen out of the collector's sight. What the
    collector then mostly walks is held reservations (two tracked objects each, long-lived by
    design): with the default thresholds it walked each of them again and again, 1.8 µs per
    acquire while a million were held, in pauses of up to 0.35 s. Fewer, larger young
    collections and 5x rarer full ones: 0.3 µs, pauses under 10 ms (measured in-process)."""
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


_GC_THRESHOLDS = (5000, 10, 50)  # CPython's defaults: (700, 10, 10)


class _Sniffer(asyncio.Protocol):
    """A connection whose protocol is not known yet (see the module docstring)."""

    __slots__ = ("server", "transport", "buffer", "last_active")

    def __init__(self, server: SidecarServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        server.metrics.connections_opened += 1
        if server.open_connections() >= server.config.max_connections or server.stopping:
            server.metrics.connections_refused += 1
            transport.close()
            return
        server.sniffing.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.server.sniffing.discard(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        size = min(len(buffer), len(MAGIC))
        if buffer[:size] == MAGIC[:size]:
            if len(buffer) < len(MAGIC):
                self.buffer = buffer  # a prefix of the magic: wait for the rest
                return
            self._hand_over(self.server.binary_connection(self.transport), buffer[len(MAGIC) :])
        else:
            self._hand_over(self.server.http_connection(), buffer)

    def _hand_over(self, protocol: asyncio.Protocol, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.server.sniffing.discard(self)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data and not transport.is_closing():
            protocol.data_received(data)


class SidecarServer:
    """Owns the socket, the service and the lifecycle. `await run()` serves until stopped."""

    def __init__(self, config: SidecarConfig, config_path: str | None = None, *, tune_gc: bool = False) -> None:
        """`tune_gc`: the process is the server's own (`llmthrottle serve`): tune its cyclic
        garbage collector for serving (see `_tune_gc`) once started."""
        self.config = config
        self.config_path = config_path
        self.tune_gc = tune_gc
        self.metrics = Metrics()
        self.access = AccessPolicy(config.access, config.access_default)
        self.sniffing: set[_Sniffer] = set()
        self.binary: set[BinaryConnection] = set()
        self.stopping = False
        self.service: Service | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._stopped: asyncio.Event | None = None
        self._lock_fd: int | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._expiring: asyncio.Future[int] | None = None

    # ------------------------------------------------------------------ connections

    def open_connections(self) -> int:
        http = len(self._runner.server.connections) if self._runner and self._runner.server else 0
        return len(self.sniffing) + len(self.binary) + http

    def binary_connection(self, transport: Any) -> BinaryConnection:
        assert self.service is not None
        sock = transport.get_extra_info("socket")
        peer = self.access.peer(*peer_credentials(sock))
        connection = BinaryConnection(self.service, peer, self.config.max_frame_bytes, self.binary.discard)
        self.binary.add(connection)
        return connection

    def http_connection(self) -> asyncio.Protocol:
        assert self._runner is not None and self._runner.server is not None
        return self._runner.server()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Binds the socket and starts serving (returns once accepting)."""
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        # The socket first: a server that must refuse (another one answers, or the path is not
        # a socket) refuses before it opens any state or ledger.
        sock, self._lock_fd = bind_unix_socket(self.config.socket, self.config.socket_mode, self.config.socket_group)
        try:
            ledger = None
            if self.config.ledger_path is not None:
                from ..ledger import Ledger

                ledger = Ledger(self.config.ledger_path, group_access=self.config.ledger_group_access)
            self.service = Service(self.config, ledger=ledger, metrics=self.metrics)
        except BaseException:
            sock.close()
            os.unlink(self.config.socket)
            os.close(self._lock_fd)
            self._lock_fd = None
            raise
        app = make_app(self.service, lambda: self.access, self.reload, self.config.max_frame_bytes)
        app.logger.setLevel(logging.WARNING)  # aiohttp's own per-request logs are noise here
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self.config.idle_timeout_s,
            tcp_keepalive=False,
        )
        await self._runner.setup()
        self._listener = await loop.create_unix_server(lambda: _Sniffer(self), sock=sock, backlog=4096)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload_logged)
        self._sweeper = loop.call_later(_SWEEP_INTERVAL_S, self._sweep)
        if self.tune_gc:
            _tune_gc()
        _log.info(
            "serving on %s (pid %d, policy %s, state %s, ledger %s)",
            self.config.socket,
            os.getpid(),
            self.config_path or "built-in default",
            self.config.state_kind,
            self.config.ledger_path or "none",
        )

    async def run(self) -> None:
        """Starts, serves until SIGTERM/SIGINT or `stop()`, then shuts down gracefully."""
        await self.start()
        assert self._stopped is not None
        await self._stopped.wait()
        await self.shutdown()

    def stop(self) -> None:
        """Asks `run()` to shut down (safe from a signal handler)."""
        if self._stopped is not None:
            self._stopped.set()

    async def shutdown(self) -> None:
        """Stop accepting, answer what was already received, flush the ledger, remove the socket."""
        self.stopping = True
        _log.info("shutting down")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            self._listener.close()
        # Binary requests are answered inside data_received (on a remote state, on its threads:
        # those answers are awaited), so none is half-done here; close() still sends what is
        # buffered before closing.
        answering = [future for connection in self.binary for future in connection.answering]
        if answering:
            await asyncio.wait(answering, timeout=30)
            await asyncio.sleep(0)  # their answers are written by callbacks of the loop
        for connection in list(self.binary):
            if connection.transport is not None:
                connection.transport.close()
        for sniffer in list(self.sniffing):
            if sniffer.transport is not None:
                sniffer.transport.close()
        if self._runner is not None:
            await self._runner.cleanup()  # lets in-flight HTTP requests finish
        if self.service is not None:
            self.service.close()
        try:
            os.unlink(self.config.socket)
        except FileNotFoundError:
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        _log.info("stopped")

    # ------------------------------------------------------------------ periodic work, reload

    def _sweep(self) -> None:
        """Expires old reservations and closes idle connections (one timer for all)."""
        assert self.service is not None
        next_sweep_s = _SWEEP_INTERVAL_S
        try:
            if self.service.executor is not None:
                # A remote state: each expiry is a round trip, so they run on its threads, one
                # slice at a time.
                if self._expiring is None or self._expiring.done():
                    self._expiring = asyncio.get_running_loop().run_in_executor(
                        self.service.executor, self.service.expire, None, _EXPIRE_SLICE
                    )
            elif self.service.expire(limit=_EXPIRE_SLICE) == _EXPIRE_SLICE:
                next_sweep_s = 0.0  # more are due: the next slice after other work had a turn
            deadline = time.monotonic() - self.config.idle_timeout_s
            idle: list[_Sniffer | BinaryConnection] = [c for c in self.binary if c.last_active < deadline]
            idle.extend(s for s in self.sniffing if s.last_active < deadline)
            for connection in idle:
                if connection.transport is not None:
                    connection.transport.close()
            if idle:
                _log.info("closed %d idle connections", len(idle))
        finally:
            self._sweeper = asyncio.get_running_loop().call_later(next_sweep_s, self._sweep)

    def reload(self) -> dict[str, Any]:
        """Re-reads the policy file; counters carry over. Raises ConfigError (and keeps the
        current policy) when the new file is invalid."""
        assert self.service is not None
        if self.config_path is None:
            self.metrics.reloads["unchanged"] = self.metrics.reloads.get("unchanged", 0) + 1
            return {"reloaded": False, "reason": "no policy file (built-in default)"}
        try:
            config = load_config(self.config_path)
        except Exception:
            self.metrics.reloads["failed"] = self.metrics.reloads.get("failed", 0) + 1
            raise
        restart_needed = [name for name in _RESTART_ONLY if getattr(config, name) != getattr(self.config, name)]
        if restart_needed:
            _log.warning("policy reload: %s changed; those take effect on restart", ", ".join(restart_needed))
        for name in _RESTART_ONLY:
            setattr(config, name, getattr(self.config, name))
        self.service.apply_policy(config)
        self.config = config
        self.access = AccessPolicy(config.access, config.access_default)
        for connection in self.binary:  # open connections get the new [access] too
            peer = connection.peer
            connection.peer = self.access.peer(peer.pid, peer.uid, peer.gid)
            connection.peer.info = peer.info
        self.metrics.reloads["ok"] = self.metrics.reloads.get("ok", 0) + 1
        _log.info("policy reloaded from %s: namespaces %s", self.config_path, sorted(config.namespaces))
        return {"reloaded": True, "namespaces": sorted(config.namespaces), "restart_needed": restart_needed}

    def _reload_logged(self) -> None:
        try:
            self.reload()
        except Exception as error:
            _log.error("policy reload failed, keeping the current policy: %s", error)
