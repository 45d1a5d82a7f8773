"""The fault helpers themselves (tests/faults.py), checked with the real etcdctl and raw sockets."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid

import pytest

from pytest_taskctl.etcd.server import EmbeddedEtcd

from .conftest import wait_for
from .faults import EtcdCluster, FaultProxy, run_etcdctl

VERSION_REQUEST = b"GET /version HTTP/1.1\r\nHost: etcd\r\nConnection: keep-alive\r\n\r\n"


def _key() -> str:
    return f"/faults-test/{uuid.uuid4().hex[:10]}"


def _connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=5)
    sock.settimeout(5)
    return sock


def _http_version(sock: socket.socket) -> bytes:
    """One HTTP request/response on an open connection to etcd's gateway."""
    sock.sendall(VERSION_REQUEST)
    return sock.recv(65536)


def test_pass_mode_forwards_etcdctl(etcd_proxy: FaultProxy) -> None:
    key = _key()
    assert run_etcdctl(etcd_proxy.endpoint, "put", key, "v1").returncode == 0
    got = run_etcdctl(etcd_proxy.endpoint, "get", key, "--print-value-only")
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "v1"
    assert etcd_proxy.bytes_forwarded > 0


def test_delay_mode_adds_the_delay_each_way(etcd_proxy: FaultProxy) -> None:
    with _connect(etcd_proxy) as sock:
        started = time.monotonic()
        assert b"etcdserver" in _http_version(sock)
        direct = time.monotonic() - started
        etcd_proxy.delay(500)  # the 1 s round trip of the contract
        started = time.monotonic()
        assert b"etcdserver" in _http_version(sock)  # same connection: no new handshake
        slow = time.monotonic() - started
    assert 1.0 <= slow < 1.0 + direct + 0.5
    key = _key()
    started = time.monotonic()
    result = run_etcdctl(etcd_proxy.endpoint, "put", key, "slow", command_timeout=10)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 1.0


def test_freeze_keeps_connections_open_and_silent(etcd_proxy: FaultProxy) -> None:
    with _connect(etcd_proxy) as sock:
        assert b"etcdserver" in _http_version(sock)
        etcd_proxy.freeze()
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):  # no data, and no close either (that would be b"")
            _http_version(sock)
        result = run_etcdctl(etcd_proxy.endpoint, "get", "/x", command_timeout=1, dial_timeout=1)
        assert result.returncode != 0
        assert "deadline exceeded" in result.stderr or "context deadline" in result.stderr
        assert etcd_proxy.open_connections >= 1
        etcd_proxy.pass_through()  # what was held flows on
        sock.settimeout(5)
        assert b"etcdserver" in sock.recv(65536)
    assert run_etcdctl(etcd_proxy.endpoint, "get", "/x").returncode == 0


def test_drop_closes_connections_and_refuses_new_ones(etcd_proxy: FaultProxy) -> None:
    with _connect(etcd_proxy) as sock:
        assert b"etcdserver" in _http_version(sock)
        etcd_proxy.drop()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(65536) == b""  # closed under the client
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((etcd_proxy.host, etcd_proxy.port), timeout=2).close()
    started = time.monotonic()
    result = run_etcdctl(etcd_proxy.endpoint, "get", "/x", command_timeout=2, dial_timeout=1)
    assert result.returncode != 0
    assert time.monotonic() - started < 10
    etcd_proxy.pass_through()  # listens again on the same port
    assert run_etcdctl(etcd_proxy.endpoint, "get", "/x").returncode == 0


def test_cluster_serves_from_the_remaining_members_after_a_kill(etcd_cluster: EtcdCluster) -> None:
    key = _key()
    assert run_etcdctl(etcd_cluster.endpoint, "put", key, "before").returncode == 0
    etcd_cluster.kill(0)
    assert len(etcd_cluster.alive()) == 2
    rest = ",".join(etcd_cluster.endpoints[1:])
    # Killing the leader costs an election (1 s election timeout, more on a busy machine).
    wait_for(lambda: run_etcdctl(rest, "put", key, "after").returncode == 0, timeout=20)
    got = run_etcdctl(etcd_cluster.endpoints[2], "get", key, "--print-value-only")
    assert got.stdout.strip() == "after"
    dead = run_etcdctl(etcd_cluster.endpoints[0], "get", key, command_timeout=1, dial_timeout=1)
    assert dead.returncode != 0

    etcd_cluster.restart(0)  # rejoins on its data directory and catches up
    member0 = etcd_cluster.endpoints[0]
    wait_for(lambda: run_etcdctl(member0, "get", key, "--print-value-only").stdout == "after\n")
    health = run_etcdctl(etcd_cluster.endpoint, "endpoint", "health", "-w", "json")
    assert health.returncode == 0, health.stderr
    assert all(entry["health"] for entry in json.loads(health.stdout))


def test_etcd34_fixture_runs_etcd_3_4(etcd34: EmbeddedEtcd) -> None:
    status = run_etcdctl(etcd34.endpoint, "endpoint", "status", "-w", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[0]["Status"]["version"].startswith("3.4.")
