"""``--join`` under faults: the etcd member in use dies, a process is stopped past its lease.

The plain-run counterparts are in ``test_etcd_faults.py`` (member loss) and
``test_survival.py`` (SIGSTOP past the lease); the SIGKILL of a joined process
is in ``test_join.py``. Real etcd members, real pytest processes.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_taskctl import StateStore
from pytest_taskctl.etcd.gateway import EtcdGateway, prefix_end
from pytest_taskctl.etcd.lease import Lease
from pytest_taskctl.etcd.server import EmbeddedEtcd
from pytest_taskctl.etcd.settings import EtcdSettings, parse_endpoints
from pytest_taskctl.etcd.writer import KeyWriter
from pytest_taskctl.features.join.layout import JoinKeys
from pytest_taskctl.features.join.queue import WorkQueue
from pytest_taskctl.keys import RunKeys

from .conftest import results_of, wait_for
from .faults import EtcdCluster, run_etcdctl
from .test_join import SUITE, finish, stamps_of, start
from .test_join_pause import GATED_SUITE


@pytest.fixture
def joined(ptr: pytest.Pytester, taskctl_env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """``test_join``'s suite: the stamp file and the environment of its processes."""
    ptr.makepyfile(test_suite=SUITE)
    stamps = ptr.path / "stamps.txt"
    return stamps, {**taskctl_env, "STAMPS": str(stamps)}


def lead_with_first_member(cluster: EtcdCluster) -> None:
    """Make member 0 the leader, so that killing it also costs an election (the worst case)."""
    status = json.loads(run_etcdctl(cluster.endpoint, "endpoint", "status", "-w", "json").stdout)
    first = status[0]["Status"]["header"]["member_id"]
    leader = status[0]["Status"]["leader"]
    if leader != first:
        at = next(s["Endpoint"] for s in status if s["Status"]["header"]["member_id"] == leader)
        moved = run_etcdctl(at, "move-leader", f"{first:x}")
        assert moved.returncode == 0, moved.stderr


def by_worker(store: StateStore, run_id: str) -> Counter[str]:
    """Results per worker, as the member read has them (serializable: answered during an
    election, where a linearizable read would wait); empty when the read fails."""
    results = RunKeys(store.prefix, run_id).results
    try:
        kvs = store.gateway.range(results, prefix_end(results), serializable=True, timeout=0.5)
    except Exception:
        return Counter()
    return Counter(str(json.loads(kv.value).get("worker")) for kv in kvs.kvs)


def test_killing_the_member_in_use_mid_run_loses_no_test(
    ptr: pytest.Pytester,
    joined: tuple[Path, dict[str, str]],
    etcd_cluster: EtcdCluster,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--taskctl-etcd a,b,c``: both processes use a, the leader; it dies; every test runs once."""
    stamps, env = joined
    env.update(COUNT="40", SLEEP="0.1", PYTEST_TASKCTL_ETCD=etcd_cluster.endpoint)
    survivors = ",".join(etcd_cluster.endpoints[1:])
    lead_with_first_member(etcd_cluster)
    processes = [start(ptr.path, env, "j-member") for _ in range(2)]
    with StateStore(survivors, prefix) as store:
        try:
            wait_for(lambda: len(by_worker(store, "j-member")) == 2, timeout=30)
            etcd_cluster.kill(0)  # both bound to the first member that answered
            killed = time.monotonic()
            before = wait_for(lambda: by_worker(store, "j-member"), timeout=10)
            assert isinstance(before, Counter)
            # Recovered: each process has landed a result since the kill.
            wait_for(
                lambda: all(
                    n > before[w] for w, n in by_worker(store, "j-member").items() if w in before
                ),
                timeout=15,
            )
            recovered = time.monotonic() - killed
        finally:
            outcomes = finish(processes)
        assert [code for code, _ in outcomes] == [0, 0], outcomes
        assert not any("INTERNALERROR" in out for _, out in outcomes)
        ran = Counter(name for name, _ in stamps_of(stamps))
        assert ran == Counter({f"t{n}": 1 for n in range(40)})
        assert len(results_of(store, "j-member")) == 40
        assert store.get_status("j-member") == "COMPLETED"
    with capsys.disabled():
        print(f"\njoin member kill: both processes wrote results again {recovered:.2f} s after")
    assert recovered < 10


def test_a_process_stopped_past_its_lease_overwrites_nothing_and_runs_nothing_twice(
    ptr: pytest.Pytester,
    joined: tuple[Path, dict[str, str]],
    store: StateStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGSTOP mid-test past the lease: the other runs its claims; after SIGCONT it ends normally.

    The stopped process finishes the test it was in (a test is never cut
    short), but that result is refused by the claim's guard: the other
    process's result of the same test stands. Tests it had claimed ahead are
    dropped, not run a second time. It exits 0 (its tests passed).
    """
    stamps, env = joined
    ptr.makepyfile(test_suite=GATED_SUITE)
    gate = ptr.path / "gate"
    env.update(GATE=str(gate), PYTEST_TASKCTL_LEASE_TTL="3")
    stopped = start(ptr.path, env, "j-stop")
    other: list = []
    try:
        wait_for(lambda: ("t0", stopped.pid) in stamps_of(stamps), timeout=30)
        other.append(start(ptr.path, env, "j-stop"))
        wait_for(lambda: any(pid == other[0].pid for _, pid in stamps_of(stamps)), timeout=30)
        stopped.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        gate.touch()  # the stopped process's t0 ends as soon as it runs again
        wait_for(lambda: ("t0", other[0].pid) in stamps_of(stamps), timeout=15)
        taken_over = time.monotonic() - stopped_at
        key = "test_suite.py::test_t[0]"
        wait_for(lambda: key in results_of(store, "j-stop"), timeout=10)
        kept = results_of(store, "j-stop")[key]
        stopped.send_signal(signal.SIGCONT)
    finally:
        stopped.send_signal(signal.SIGCONT)
        outcomes = finish([stopped, *other])
    (woken_code, woken_out), (other_code, other_out) = outcomes
    assert other_code == 0, other_out
    assert woken_code == 0, woken_out
    assert "INTERNALERROR" not in woken_out + other_out
    assert "1 result(s) of this process were not recorded" in woken_out
    ran = Counter(name for name, _ in stamps_of(stamps))
    assert ran.pop("t0") == 2  # in the stopped process, then in the other
    assert ran == Counter({f"t{n}": 1 for n in range(1, 16)})
    results = results_of(store, "j-stop")
    assert len(results) == 16
    assert results[key] == kept and f"-{other[0].pid}-" in kept["worker"]
    assert store.get_status("j-stop") == "COMPLETED"
    with capsys.disabled():
        print(f"\njoin SIGSTOP: the stopped process's test ran elsewhere {taken_over:.2f} s after")
    assert taken_over < 10


class AnswerLost(EtcdGateway):
    """Sends every transaction twice and returns the second answer.

    What the gateway itself does when the member in use dies after it
    committed a transaction but before it answered: it sends the same
    request to the next member. Real etcd, real requests, nothing faked.
    """

    def call(self, method: str, data: Any, timeout: float | None = None) -> Any:
        if method == "/kv/txn":
            super().call(method, data, timeout)
        return super().call(method, data, timeout)


def test_a_claim_and_an_ack_whose_answers_were_lost_are_ours(
    etcd: EmbeddedEtcd, prefix: str
) -> None:
    gateway = AnswerLost.connect(EtcdSettings(parse_endpoints(etcd.endpoint, "test")))
    keys = JoinKeys(RunKeys(prefix, "j-twice"))
    gateway.put(keys.next, "0")
    lease = Lease.grant(gateway, 10)
    writer = KeyWriter(gateway)
    refused: list[int] = []
    queue = WorkQueue(
        gateway, keys, "me", 8, lambda: lease, lambda i, d: ("", ""), lambda i, d: None, writer
    )
    try:
        claims = queue.claim()  # committed by the first send, refused to the second
        assert [c.index for c in claims] == [0, 1] and queue.adopted == 1
        assert gateway.get(keys.next) == b"2"
        acks = [
            queue.ack(claim, f"{prefix}/result/{claim.index}", "passed", lambda: refused.append(1))
            for claim in claims
        ]
        assert writer.flush(timeout=10)
        assert [ack.written for ack in acks] == [False, False]  # the second sends were refused
        assert refused == []  # ...and known for our own first sends: the results stand
        assert gateway.get(f"{prefix}/result/1") == b"passed"
        assert gateway.get(keys.claim(0)) is None and gateway.get(keys.done(0)) is not None
    finally:
        writer.close()
        lease.revoke()
        gateway.close()
