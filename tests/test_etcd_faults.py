"""etcd as users really have it: proxy variables, a slow etcd, silent connections, lost members.

Every fault is real: a TCP proxy (``tests/faults.py``) between the plugin and
a real etcd, a 3-member etcd cluster whose members are SIGKILLed, and
pytest runs in subprocesses driven with etcdctl. The figures each test
measures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_taskctl.etcd.gateway import EtcdGateway
from pytest_taskctl.etcd.server import EmbeddedEtcd
from pytest_taskctl.etcd.settings import EtcdSettings, parse_endpoints
from pytest_taskctl.etcd.store import clear_stale_flags
from pytest_taskctl.etcd.watch import WatchedRange
from pytest_taskctl.keys import RunKeys
from pytest_taskctl.ownership import claim_run

from .conftest import Etcdctl, wait_for
from .faults import EtcdCluster, FaultProxy, run_etcdctl
from .suites import RunningSuite, suite_env

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)
#: Nothing listens on port 1: a request that honoured these would fail.
DEAD_PROXY = "http://127.0.0.1:1"


def gateway_to(endpoint: str) -> EtcdGateway:
    return EtcdGateway.connect(EtcdSettings(parse_endpoints(endpoint, "test")))


def start_suite(
    tmp_path: Path,
    env: dict[str, str],
    names: list[str],
    gates: list[str],
    run_id: str,
) -> RunningSuite:
    return RunningSuite(tmp_path, suite_env(env), names, gates, run_id).start()


def seconds_until(condition: object, since: float, timeout: float) -> float:
    """Poll ``condition`` (a callable) and return how long after ``since`` it held."""
    wait_for(condition, timeout, interval=0.01)  # type: ignore[arg-type]
    return time.monotonic() - since


@pytest.fixture
def running() -> Iterator[list[RunningSuite]]:
    """Suites started by a test; killed at its end if still running."""
    made: list[RunningSuite] = []
    yield made
    for run in made:
        run.kill()


# -- proxy variables and a slow etcd (issue 8, item 2) ------------------------------------------


def test_gateway_ignores_proxy_variables(
    etcd: EmbeddedEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, DEAD_PROXY)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    gateway = gateway_to(etcd.endpoint)
    try:
        assert gateway.put("/taskctl-test-proxy/k", "v") > 0
        assert gateway.get("/taskctl-test-proxy/k") == b"v"
    finally:
        gateway.close()


def test_gateway_works_over_a_one_second_round_trip(etcd_proxy: FaultProxy) -> None:
    etcd_proxy.delay(500)
    started = time.monotonic()
    gateway = gateway_to(etcd_proxy.endpoint)
    connected = time.monotonic() - started
    try:
        started = time.monotonic()
        gateway.put("/taskctl-test-slow/k", "v")
        round_trip = time.monotonic() - started
        print(f"1 s RTT: connect {connected:.2f} s, one put {round_trip:.2f} s")
        assert round_trip >= 0.9
    finally:
        gateway.close()


def test_proxy_variables_leave_pause_working(
    tmp_path: Path,
    taskctl_env: dict[str, str],
    etcdctl: Etcdctl,
    prefix: str,
    running: list[RunningSuite],
) -> None:
    env = {k: v for k, v in taskctl_env.items() if k.lower() != "no_proxy"}
    env.update(dict.fromkeys(PROXY_VARIABLES, DEAD_PROXY))
    run = start_suite(tmp_path, env, ["one", "two"], ["one"], "px-1")
    running.append(run)
    run.wait_started("one")
    put_at = time.monotonic()
    etcdctl("put", f"{prefix}/runs/px-1/paused", "1")
    seen = seconds_until(lambda: "pause requested through etcd" in run.log_text, put_at, 10)
    print(f"proxy variables set: pause seen {seen * 1000:.0f} ms after the write")
    run.release("one")
    wait_for(lambda: etcdctl.get(f"{prefix}/runs/px-1/status") == "PAUSED")
    assert not run.started("two")
    etcdctl("del", f"{prefix}/runs/px-1/paused")
    output = run.finish()
    assert run.returncode == 0, output
    assert "etcd unreachable" not in output
    assert "2 passed" in output


def test_one_second_round_trip_pauses_and_cancels(
    tmp_path: Path,
    taskctl_env: dict[str, str],
    etcd_proxy: FaultProxy,
    etcdctl: Etcdctl,
    prefix: str,
    running: list[RunningSuite],
) -> None:
    etcd_proxy.delay(500)  # each way: a 1 s round trip
    env = {**taskctl_env, "PYTEST_TASKCTL_ETCD": etcd_proxy.endpoint}
    run = start_suite(tmp_path, env, ["one", "two", "three"], ["one", "two"], "slow-1")
    running.append(run)
    run.wait_started("one", timeout=60)
    status = f"{prefix}/runs/slow-1/status"
    wait_for(lambda: etcdctl.get(status) == "RUNNING", 30)

    put_at = time.monotonic()
    etcdctl("put", f"{prefix}/runs/slow-1/paused", "1")
    paused = seconds_until(lambda: "pause requested through etcd" in run.log_text, put_at, 10)
    run.release("one")
    wait_for(lambda: etcdctl.get(status) == "PAUSED", 30)
    assert not run.started("two")
    etcdctl("del", f"{prefix}/runs/slow-1/paused")
    run.wait_started("two", timeout=30)

    put_at = time.monotonic()
    etcdctl("put", f"{prefix}/runs/slow-1/cancelled", "1")
    cancelled = seconds_until(lambda: "cancel requested through etcd" in run.log_text, put_at, 10)
    print(
        f"1 s RTT: pause seen after {paused * 1000:.0f} ms, cancel after {cancelled * 1000:.0f} ms"
    )
    run.release("two")
    output = run.finish(120)
    assert run.returncode == 2, output
    assert "etcd unreachable" not in output
    assert "2 passed, 1 skipped" in output
    assert not run.started("three")
    wait_for(lambda: etcdctl.get(status) == "CANCELLED")


# -- a silent connection (item 3) ---------------------------------------------------------------


def test_flag_written_during_a_silent_connection_is_acted_on_within_5_s(
    tmp_path: Path,
    taskctl_env: dict[str, str],
    etcd_proxy: FaultProxy,
    etcdctl: Etcdctl,
    prefix: str,
    running: list[RunningSuite],
) -> None:
    env = {**taskctl_env, "PYTEST_TASKCTL_ETCD": etcd_proxy.endpoint}
    run = start_suite(tmp_path, env, ["one", "two"], ["one"], "silent-1")
    running.append(run)
    run.wait_started("one")
    status = f"{prefix}/runs/silent-1/status"
    wait_for(lambda: etcdctl.get(status) == "RUNNING")

    etcd_proxy.freeze_open()  # the run's connections go silent; a new one would work
    put_at = time.monotonic()
    etcdctl("put", f"{prefix}/runs/silent-1/paused", "1")  # straight to etcd
    seen = seconds_until(lambda: "pause requested through etcd" in run.log_text, put_at, 15)
    print(f"silent connection: pause seen {seen:.2f} s after the write")
    assert seen <= 5
    run.release("one")
    wait_for(lambda: etcdctl.get(status) == "PAUSED", 15)
    assert not run.started("two")
    etcdctl("del", f"{prefix}/runs/silent-1/paused")
    output = run.finish()
    assert run.returncode == 0, output
    assert "2 passed" in output


def test_silent_etcd_is_reported_lost_then_back(etcd_proxy: FaultProxy, etcdctl: Etcdctl) -> None:
    gateway = gateway_to(etcd_proxy.endpoint)
    key = f"/taskctl-test-silent/{time.time_ns()}"
    reports: list[bool] = []
    view = WatchedRange(gateway, key, on_connection_change=lambda up, _: reports.append(up))
    view.start(gateway.range(key))
    try:
        wait_for(lambda: view.connected)
        etcd_proxy.freeze()  # every connection, old and new
        frozen_at = time.monotonic()
        noticed = seconds_until(lambda: not view.connected, frozen_at, 15)
        print(f"fully silent etcd: reported lost after {noticed:.2f} s")
        # A check each second; the pooled connection, then a fresh one, each time out.
        assert noticed <= 6.5
        etcdctl("put", key, "1")
        etcd_proxy.pass_through()
        wait_for(lambda: view.get(key) == b"1" and view.connected, 15)
        assert reports == [True, False, True]
    finally:
        view.stop()
        gateway.close()


# -- failover (item 4) --------------------------------------------------------------------------


def test_losing_the_member_in_use_moves_to_another(
    tmp_path: Path,
    taskctl_env: dict[str, str],
    etcd_cluster: EtcdCluster,
    prefix: str,
    running: list[RunningSuite],
) -> None:
    env = {**taskctl_env, "PYTEST_TASKCTL_ETCD": etcd_cluster.endpoint}
    run = start_suite(tmp_path, env, ["one", "two", "three"], ["one"], "fo-1")
    running.append(run)
    live = Etcdctl(",".join(etcd_cluster.endpoints[1:]))
    status = f"{prefix}/runs/fo-1/status"
    run.wait_started("one")
    wait_for(lambda: live.get(status) == "RUNNING")

    etcd_cluster.kill(0)  # the plugin binds to the first member that answers
    killed_at = time.monotonic()
    moved = seconds_until(
        lambda: "failed (" in run.log_text and "; using" in run.log_text, killed_at, 10
    )
    # If m0 led the cluster, a write fails until the others elect a leader.
    put_at = put_until_accepted(live.endpoint, f"{prefix}/runs/fo-1/paused", "1")
    seen = seconds_until(lambda: "pause requested through etcd" in run.log_text, put_at, 10)
    print(
        f"failover: moved {moved:.2f} s after the kill; write accepted "
        f"{put_at - killed_at:.2f} s after it; pause seen {seen * 1000:.0f} ms after that"
    )
    assert moved <= 3
    assert seen <= 3
    run.release("one")
    wait_for(lambda: live.get(status) == "PAUSED")
    assert not run.started("two")
    live("del", f"{prefix}/runs/fo-1/paused")
    output = run.finish()
    assert run.returncode == 0, output
    assert "3 passed" in output
    assert live.get(status) == "COMPLETED"


def test_gateway_moves_to_a_live_member(etcd_cluster: EtcdCluster) -> None:
    gateway = gateway_to(etcd_cluster.endpoint)
    try:
        first = gateway.endpoint
        assert f"{first.host}:{first.port}" == etcd_cluster.endpoints[0]
        etcd_cluster.kill(0)
        started = time.monotonic()
        gateway.range("/", serializable=True)  # refused on m0, answered by the next
        moved = time.monotonic() - started
        assert gateway.endpoint != first
        # A write needs a leader: if m0 led, the others elect one first.
        wait_for(lambda: _put(gateway, "/taskctl-test-failover/k", "v"), 15)
        written = time.monotonic() - started
        print(f"failover of one call: {moved * 1000:.0f} ms; a write lands after {written:.2f} s")
        assert moved < 1
        assert gateway.get("/taskctl-test-failover/k") == b"v"
    finally:
        gateway.close()


def put_until_accepted(endpoints: str, key: str, value: str, timeout: float = 20) -> float:
    """Put with etcdctl until the cluster takes it; when the accepted attempt began."""
    deadline = time.monotonic() + timeout
    while True:
        began = time.monotonic()
        if run_etcdctl(endpoints, "put", key, value, command_timeout=2).returncode == 0:
            return began
        assert time.monotonic() < deadline, "the cluster never took the write"


def _put(gateway: EtcdGateway, key: str, value: str) -> bool:
    try:
        gateway.put(key, value)
    except Exception:
        return False
    return True


# -- compaction (item 13) -----------------------------------------------------------------------


def test_compaction_resyncs_without_reporting_a_loss(
    etcd: EmbeddedEtcd, etcdctl: Etcdctl, prefix: str
) -> None:
    gateway = gateway_to(etcd.endpoint)
    key = f"{prefix}/compacted/paused"
    before = gateway.range(key)  # the view will watch on from here...
    gateway.put(key, "1")
    latest = gateway.put(f"{prefix}/compacted/other", "x")
    etcdctl("compact", str(latest))  # ...but etcd no longer has those revisions
    reports: list[bool] = []
    view = WatchedRange(gateway, key, on_connection_change=lambda up, _: reports.append(up))
    view.start(before)
    try:
        wait_for(lambda: view.get(key) == b"1")
        gateway.put(key, "0")
        wait_for(lambda: view.get(key) == b"0")
        assert reports == [True]  # never "lost etcd"
    finally:
        view.stop()
        gateway.close()


# -- round trips at start-up ------------------------------------------------------------------


class CountingGateway(EtcdGateway):
    """A real gateway that notes each RPC it makes: start-up over a slow link pays per call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def call(self, method: str, data: Mapping[str, Any], timeout: float | None = None) -> Any:
        self.calls.append(method)
        return super().call(method, data, timeout)


def test_taking_a_run_costs_three_round_trips_and_its_stale_flags_one_read(
    etcd: EmbeddedEtcd, prefix: str, etcdctl: Etcdctl
) -> None:
    """One read (lease, meta and status together), the lease grant, the claim; the
    flags of the attempt before are cleared with the status that read found."""
    keys = RunKeys(prefix, "rt-1")
    etcdctl("put", keys.flag("cancelled"), "1")  # a cancel written before...
    etcdctl("put", keys.status, "COMPLETED")  # ...the attempt ended
    gateway = CountingGateway.connect(EtcdSettings.resolve(endpoints=etcd.endpoint))
    assert isinstance(gateway, CountingGateway)
    gateway.calls = []
    claim = claim_run(gateway, keys, resume=True)
    try:
        assert gateway.calls == ["/kv/txn", "/lease/grant", "/kv/txn"]
        assert claim.previous_status == "COMPLETED"
        gateway.calls = []
        cleared = clear_stale_flags(gateway, keys, claim.ownership.revision, claim.status_kvs)
        assert cleared == ["cancelled='1'"]
        # The flags in one read (the status is not read again), then the delete.
        assert gateway.calls == ["/kv/txn", "/kv/txn"]
        assert etcdctl.get(keys.flag("cancelled")) is None
    finally:
        claim.ownership.release()
        gateway.close()
