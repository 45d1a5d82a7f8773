"""Faults with real parts: a TCP proxy that slows, freezes or drops etcd, and a 3-member cluster.

Nothing is mocked: :class:`FaultProxy` forwards real bytes between a real
client (etcd3-py, etcdctl) and a real etcd on loopback, and :class:`EtcdCluster`
runs three etcd processes that elect a leader among themselves. Fixtures in
``tests/conftest.py``: ``fault_proxy``, ``etcd_proxy``, ``etcd_cluster``, ``etcd34``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from pytest_taskctl.etcd.server import EmbeddedEtcd, etcd_binary, free_port

PASS, DELAY, FREEZE, DROP = "pass", "delay", "freeze", "drop"
MODES = (PASS, DELAY, FREEZE, DROP)

#: Debian's etcd-server package (etcd 3.4).
DEBIAN_ETCD = "/usr/bin/etcd"


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Connection:
    """One client connection and its upstream, pumped by two threads."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = False
        #: Frozen on its own (:meth:`FaultProxy.freeze_open`), whatever the mode.
        self.frozen = False
        self.threads = [
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True),
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        target.shutdown(socket.SHUT_WR)  # pass the half-close on
                    return
                if not self.proxy._gate(self, time.monotonic()):
                    return
                target.sendall(data)
                self.proxy._count(len(data))
        except OSError:
            self.close()
        finally:
            self.proxy._forget_if_done(self)

    def close(self) -> None:
        self.closed = True
        _close(self.client)
        _close(self.upstream)


class FaultProxy:
    """A threaded TCP proxy on loopback in front of ``target`` (``host:port``).

    Modes, switchable at any time (:meth:`set_mode` or the shortcuts):

    * ``pass``: bytes flow as they come;
    * ``delay``: every chunk is held ``delay_ms`` in each direction (500 ms
      each way makes a 1 s round trip);
    * ``freeze``: connections stay open, nothing is closed, no byte moves in
      either direction (new connections are accepted and frozen too); what
      was held flows on when the mode changes back (:meth:`freeze_open`
      freezes only the connections open now, for good);
    * ``drop``: every open connection is closed and new ones are refused
      (the listening socket is closed; it is bound again on the same port
      when the mode changes back).

    ``endpoint`` is ``127.0.0.1:PORT``, usable wherever an etcd endpoint is.
    """

    def __init__(self, target: str, host: str = "127.0.0.1") -> None:
        target_host, _, target_port = target.rpartition(":")
        self.target = (target_host or "127.0.0.1", int(target_port))
        self.host = host
        self.port = free_port(host)
        self.mode = PASS
        self.delay_ms = 0.0
        self.bytes_forwarded = 0
        self.connections_accepted = 0
        self._connections: set[_Connection] = set()
        self._cond = threading.Condition()
        self._listener: socket.socket | None = None
        self._closed = False
        self._listen()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def __repr__(self) -> str:
        return f"<FaultProxy {self.endpoint} -> {self.target[0]}:{self.target[1]} {self.mode}>"

    # -- modes ------------------------------------------------------------------------------

    def set_mode(self, mode: str, delay_ms: float | None = None) -> FaultProxy:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        with self._cond:
            previous = self.mode
            self.mode = mode
            if delay_ms is not None:
                self.delay_ms = float(delay_ms)
            dropped = list(self._connections) if mode == DROP else []
            if mode == DROP:
                self._connections.clear()
            self._cond.notify_all()
        if mode == DROP:
            self._unlisten()
            for connection in dropped:
                connection.close()
        elif previous == DROP:
            self._listen()
        return self

    def pass_through(self) -> FaultProxy:
        return self.set_mode(PASS)

    def delay(self, ms: float) -> FaultProxy:
        """Hold each chunk ``ms`` milliseconds each way (round trip + ``2 * ms``)."""
        return self.set_mode(DELAY, delay_ms=ms)

    def freeze(self) -> FaultProxy:
        return self.set_mode(FREEZE)

    def drop(self) -> FaultProxy:
        return self.set_mode(DROP)

    def freeze_open(self) -> FaultProxy:
        """Freeze the connections open now, for good; new connections pass.

        What a NAT or proxy that forgot a connection does: the old TCP
        connection stays open and silent, and no mode change revives it, while
        a new connection works. A client recovers only by giving it up.
        """
        with self._cond:
            for connection in self._connections:
                connection.frozen = True
            self._cond.notify_all()
        return self

    @property
    def open_connections(self) -> int:
        with self._cond:
            return len(self._connections)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            connections = list(self._connections)
            self._connections.clear()
            self._cond.notify_all()
        self._unlisten()
        for connection in connections:
            connection.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: drop mode or close()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)  # the target is down: the client sees its connection end
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(self, client, upstream)
            with self._cond:
                if self._closed or self.mode == DROP:
                    connection.close()
                    continue
                self._connections.add(connection)
                self.connections_accepted += 1
            connection.start()

    def _gate(self, connection: _Connection, received: float) -> bool:
        """Wait until a chunk received at ``received`` may go on; False: drop it."""
        with self._cond:
            while True:
                if connection.closed or self._closed:
                    return False
                if self.mode == FREEZE or connection.frozen:
                    self._cond.wait()
                    continue
                if self.mode == DELAY:
                    remaining = received + self.delay_ms / 1000 - time.monotonic()
                    if remaining > 0:
                        self._cond.wait(remaining)  # woken early by a mode change
                        continue
                return True

    def _count(self, size: int) -> None:
        with self._cond:
            self.bytes_forwarded += size

    def _forget_if_done(self, connection: _Connection) -> None:
        if all(not t.is_alive() or t is threading.current_thread() for t in connection.threads):
            connection.close()
            with self._cond:
                self._connections.discard(connection)


class EtcdCluster:
    """Three (``size``) etcd members on loopback, one cluster; members can die and come back."""

    def __init__(
        self, base_dir: str | os.PathLike[str], size: int = 3, binary: str | None = None
    ) -> None:
        base = Path(base_dir)
        names = [f"m{i}" for i in range(size)]
        peer_ports = [free_port() for _ in names]
        initial = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer_ports, strict=True)
        )
        self.members = [
            EmbeddedEtcd(
                base / name,
                port=free_port(),
                peer_port=peer_port,
                name=name,
                binary=binary,
                initial_cluster=initial,
            )
            for name, peer_port in zip(names, peer_ports, strict=True)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    @property
    def endpoint(self) -> str:
        """All members, comma-separated (``--taskctl-etcd``, ``etcdctl --endpoints``)."""
        return ",".join(self.endpoints)

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for member in self.members:  # all at once: a member is healthy only with quorum
            member.start(wait=False)
        try:
            for member in self.members:
                member.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, index: int) -> EmbeddedEtcd:
        """SIGKILL member ``index`` (the others keep quorum)."""
        member = self.members[index]
        member.kill()
        return member

    def restart(self, index: int, timeout: float = 30.0) -> EmbeddedEtcd:
        """Start member ``index`` again on its data directory; it rejoins the cluster."""
        member = self.members[index]
        member.kill()
        return member.start(timeout)

    def alive(self) -> list[EmbeddedEtcd]:
        return [m for m in self.members if m.process is not None and m.process.poll() is None]

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def etcd_version(binary: str) -> str:
    """``3.4.23`` from ``etcd --version``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return ""


def debian_etcd() -> str | None:
    """Debian's etcd 3.4 binary when installed, else None."""
    found = DEBIAN_ETCD if os.path.exists(DEBIAN_ETCD) else None
    if found and etcd_version(found).startswith("3.4."):
        return found
    return None


def run_etcdctl(
    endpoints: str, *args: str, command_timeout: float = 5.0, dial_timeout: float = 2.0
) -> subprocess.CompletedProcess[str]:
    """The real etcdctl, with its own timeouts, not asserting success (faults make it fail)."""
    binary = etcd_binary("etcdctl")
    return subprocess.run(
        [
            binary, "--endpoints", endpoints,
            f"--command-timeout={command_timeout}s", f"--dial-timeout={dial_timeout}s",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=command_timeout + dial_timeout + 20,
        env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
