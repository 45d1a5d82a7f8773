"""The etcd transport (``http.client``) against a real etcd: what no other test pins down.

Token expiry, keep-alive connections the other side closed, many threads on
one gateway, and a watch stream closed from another thread. Every etcd here
is real; faults come from the TCP proxy in ``tests/faults.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pytest_taskctl.etcd.endpoints import api_prefix
from pytest_taskctl.etcd.gateway import EtcdGateway, put_op
from pytest_taskctl.etcd.server import EmbeddedEtcd, free_port
from pytest_taskctl.etcd.settings import EtcdSettings, parse_endpoints

from .conftest import ETCD_BINARY, Etcdctl, wait_for
from .faults import FaultProxy


def gateway_to(endpoints: str, **settings: object) -> EtcdGateway:
    return EtcdGateway.connect(EtcdSettings(parse_endpoints(endpoints, "test"), **settings))  # type: ignore[arg-type]


class ShortTokenEtcd(EmbeddedEtcd):
    """etcd whose auth tokens expire after 1 s (the default is 5 minutes)."""

    def command(self) -> list[str]:
        return [*super().command(), "--auth-token-ttl", "1"]


def test_an_expired_token_is_renewed_once_and_the_call_succeeds(tmp_path: Path) -> None:
    server = ShortTokenEtcd(tmp_path / "etcd", port=free_port(), binary=ETCD_BINARY).start()
    try:
        ctl = Etcdctl(server.endpoint)
        ctl("user", "add", "root", "--new-user-password", "pw", "--interactive=false")
        ctl("auth", "enable")
        gateway = gateway_to(server.endpoint, user="root", password="pw")
        try:
            token = gateway._client.token
            gateway.put("/taskctl-test-token/k", "v")
            time.sleep(3)  # the token expires; etcd answers "invalid auth token"
            assert gateway.get("/taskctl-test-token/k") == b"v"
            assert gateway._client.token not in (None, token)
        finally:
            gateway.close()
    finally:
        server.stop()


def test_keep_alive_connections_closed_by_the_other_side_are_no_failed_member(
    etcd: EmbeddedEtcd, fault_proxy: object
) -> None:
    """A member (or a proxy) that closed idle connections is not left for the next one."""
    proxy: FaultProxy = fault_proxy(etcd.endpoint)  # type: ignore[operator]
    gateway = gateway_to(f"{proxy.endpoint},{etcd.endpoint}")
    try:
        gateway.put("/taskctl-test-idle/k", "1")
        proxy.drop()  # closes every open connection, the pooled ones too
        proxy.pass_through()
        assert gateway.get("/taskctl-test-idle/k") == b"1"
        assert f"{gateway.endpoint.host}:{gateway.endpoint.port}" == proxy.endpoint
        assert gateway.resets == 0
    finally:
        gateway.close()


def test_many_threads_share_one_gateway(etcd: EmbeddedEtcd, prefix: str) -> None:
    gateway = gateway_to(etcd.endpoint)
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(n: int) -> None:
        try:
            for i in range(60):
                key = f"{prefix}/threads/{n}/{i}"
                gateway.txn([put_op(key, str(i))])
                assert gateway.get(key) == str(i).encode()
        except BaseException as exc:
            errors.append(exc)

    def reset() -> None:  # connections given up while others use theirs
        while not stop.is_set():
            gateway._client.reset()
            time.sleep(0.005)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    resetter = threading.Thread(target=reset)
    try:
        resetter.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stop.set()
        resetter.join()
        assert errors == []
        assert len(gateway.range_prefix(f"{prefix}/threads/").kvs) == 6 * 60
    finally:
        stop.set()
        gateway.close()


def test_a_watch_closed_from_another_thread_ends_its_reader(
    etcd: EmbeddedEtcd, prefix: str
) -> None:
    gateway = gateway_to(etcd.endpoint)
    key = f"{prefix}/watched"
    stream, _ = gateway.open_watch(key, None, gateway.range(key).revision + 1)
    messages: list[object] = []
    reader = threading.Thread(target=lambda: messages.extend(stream))
    reader.start()
    try:
        wait_for(lambda: messages)  # etcd's "created" message
        gateway.put(key, "1")
        wait_for(lambda: len(messages) == 2)
        stream.close()
        reader.join(5)
        assert not reader.is_alive()
    finally:
        stream.close()
        gateway.close()


@pytest.mark.parametrize(
    ("version", "prefix"),
    [("3.2.26", "/v3alpha"), ("3.3.27", "/v3beta"), ("3.4.23", "/v3"), ("3.5.1", "/v3")],
)
def test_the_gateway_prefix_follows_the_server_version(version: str, prefix: str) -> None:
    assert api_prefix(version) == prefix


def test_a_silent_member_times_a_call_out_on_time_and_says_so(
    etcd: EmbeddedEtcd, fault_proxy: object
) -> None:
    """A member that stops answering on a pooled connection ends the call after the
    read timeout, as ``timed out`` (what the CLI and the failover log say)."""
    proxy: FaultProxy = fault_proxy(etcd.endpoint)  # type: ignore[operator]
    gateway = gateway_to(proxy.endpoint)
    try:
        gateway.put("/taskctl-test-silent/k", "1")  # leaves a pooled connection
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(OSError) as raised:
            gateway.call("/kv/range", {"key": "L3Rhc2tjdGwtdGVzdC1zaWxlbnQvaw=="}, timeout=0.5)
        waited = time.monotonic() - started
        assert 0.4 <= waited < 2.5, waited
        assert "timed out" in str(raised.value)
        proxy.pass_through()
        assert gateway.get("/taskctl-test-silent/k") == b"1"
    finally:
        gateway.close()
