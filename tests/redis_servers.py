"""Real Redis servers for the tests: standalone (with a password, ACL users, TLS or as a
replica when asked) and a cluster of 3 masters (with replicas when asked) on loopback ports,
each in its own directory, killed and restarted at will."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    import random

    for _ in range(1000):
        port = random.randrange(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair found")


class TlsFiles(NamedTuple):
    """PEM files: a certificate authority, and a certificate it signed for 127.0.0.1 with its key."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A fresh certificate authority and a server certificate it signed for 127.0.0.1 (the
    `cryptography` package comes with pyjwt[crypto])."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
        *,
        authority: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=authority, path_length=None), critical=True)
        )
        if authority:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca = certificate("llmthrottle test CA", ca_key, "llmthrottle test CA", ca_key, authority=True)
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server = certificate("127.0.0.1", server_key, "llmthrottle test CA", ca_key, authority=False)
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


class RedisServer:
    """One redis-server process. `durable` makes every write reach its append-only file before
    the reply (appendfsync always), so a SIGKILL loses nothing that was answered. `config` adds
    configuration arguments (`["--requirepass", "secret"]`, `["--replicaof", "127.0.0.1", "6379"]`,
    `["--user", "lt", "on", ">secret", "~*", "&*", "+@all"]`); `tls` serves TLS only, on `port`."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        durable: bool = False,
        cluster: bool = False,
        node_timeout_ms: int = 2000,
        config: Sequence[str] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.durable = durable
        self.cluster = cluster
        self.node_timeout_ms = node_timeout_ms
        self.config = list(config)
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        """True once the server answers a PING (NOAUTH counts: it answered)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as raw:
            if self.tls is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(16).startswith((b"+PONG", b"-NOAUTH"))
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith((b"+PONG", b"-NOAUTH"))

    def start(self) -> None:
        assert REDIS_SERVER, "redis-server is not installed (scripts/setup installs it)"
        if self.tls:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert)]
            listen += ["--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca)]
            listen += ["--tls-auth-clients", "no"]
        else:
            listen = ["--port", str(self.port)]
        args = [
            REDIS_SERVER,
            *listen,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--protected-mode",
            "no",
            "--repl-diskless-sync-delay",  # a replica's first sync starts at once, not after 5 s
            "0",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.directory / "nodes.conf"),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
            ]
        args += self.config
        with (self.directory / "stderr.log").open("wb") as stderr:
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if self._answers():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        tail = []
        for log in (self.directory / "stderr.log", self.directory / "redis.log"):
            tail += log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
        raise RuntimeError(f"redis-server on port {self.port} did not start: {' / '.join(tail)}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None


def cli(port: int, *args: str, password: str | None = None) -> str:
    """One redis-cli command against the server on `port`: its output."""
    assert REDIS_CLI
    login = ["--no-auth-warning", "-a", password] if password else []
    command = [REDIS_CLI, "-p", str(port), *login, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout


class RedisCluster:
    """Three masters, each with `replicas` replicas (none by default): every slot served, keys
    spread over three processes. `node_timeout_ms` is how long a master may be silent before
    its replica takes over; `password` is every node's requirepass (and masterauth)."""

    def __init__(
        self, directory: Path, *, replicas: int = 0, node_timeout_ms: int = 2000, password: str | None = None
    ) -> None:
        login = ["--requirepass", password, "--masterauth", password] if password else []
        self.nodes = [
            RedisServer(directory / f"node{i}", cluster=True, node_timeout_ms=node_timeout_ms, config=login)
            for i in range(3 * (1 + replicas))
        ]
        self.replicas = replicas
        self.password = password
        assert REDIS_CLI
        subprocess.run(
            [
                REDIS_CLI,
                *(["--no-auth-warning", "-a", password] if password else []),
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_until_ready()

    def wait_until_ready(self, timeout: float = 30) -> None:
        """Returns once every running node (not only the first) sees every slot served and
        every other running node in its role, and every replica is linked to its master: a
        node that has not heard of the others yet answers CLUSTERDOWN, and a master that has
        not heard of its replica yet ignores its CLUSTER FAILOVER."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [n for n in self.nodes if n.process is not None]
            infos = [self.cli(n, "cluster", "info") for n in running]
            if all("cluster_state:ok" in info and "cluster_slots_ok:16384" in info for info in infos):
                roles = [self.cli(n, "info", "replication") for n in running]
                if all("role:master" in r or "master_link_status:up" in r for r in roles):
                    replicas = sum("role:slave" in r for r in roles)
                    if all(self._sees(n, running, replicas) for n in running):
                        return
            time.sleep(0.1)
        raise RuntimeError("the Redis cluster did not become ready")

    def _sees(self, node: RedisServer, running: list[RedisServer], replicas: int) -> bool:
        """True when `node` knows every running node, none as failing, and `replicas` of them
        as replicas."""
        flags = {}
        for line in self.cli(node, "cluster", "nodes").splitlines():
            fields = line.split()
            if len(fields) > 2:
                flags[fields[1].split("@")[0].rpartition(":")[2]] = fields[2]
        seen = [flags.get(str(n.port), "fail") for n in running]
        if any(bad in flag for flag in seen for bad in ("fail", "handshake", "noaddr")):
            return False
        return sum("slave" in flag for flag in seen) == replicas

    def failover(self, replica: RedisServer) -> None:
        """A graceful failover: `replica` catches up with its master and takes its slots (asked
        again if a loaded machine let the manual failover time out)."""
        for _ in range(3):
            self.cli(replica, "cluster", "failover")
            deadline = time.monotonic() + 8  # Redis gives a manual failover 5 s
            while time.monotonic() < deadline:
                if self.cli(replica, "role").startswith("master"):
                    return
                time.sleep(0.05)
        raise RuntimeError(f"the replica on port {replica.port} never took over")

    def cli(self, node: RedisServer, *args: str) -> str:
        """One redis-cli command against `node`: its output."""
        return cli(node.port, *args, password=self.password)

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[RedisServer]:
        """The running nodes that serve slots now."""
        return [n for n in self.nodes if n.process is not None and self.cli(n, "role").startswith("master")]

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A running replica of `master`."""
        for node in self.nodes:
            if node.process is not None and node is not master:
                role = self.cli(node, "role").split()
                if role[:1] == ["slave"] and role[2:3] == [str(master.port)]:
                    return node
        raise LookupError(f"no replica of the master on port {master.port}")

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
