"""StateStore against a real etcd: flags, waits, status, and surviving etcd restarts."""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import quote

import pytest

from pytest_taskctl import StateStore
from pytest_taskctl.etcd.gateway import EtcdUnavailable, mod_revision_equals, value_equals
from pytest_taskctl.etcd.lease import Lease
from pytest_taskctl.etcd.store import RunDied, RunEnded, UnknownRun
from pytest_taskctl.etcd.watch import WatchedRange
from pytest_taskctl.etcd.writer import KeyWriter
from pytest_taskctl.keys import InvalidRunId, decode_nodeid, encode_nodeid, flag_is_true

from .conftest import Etcdctl, wait_for

NODEIDS = [
    "tests/test_api.py::TestUsers::test_get[user-1]",
    "t.py::test[a/b c%d?e#f&g=h+i~j_k.l-m]",
    "t.py::test[\x00\x1f\x7f\"'\\]",
    "t.py::test[é 中文 \U0001f600]",
    "",
]


@pytest.mark.parametrize("nodeid", NODEIDS)
def test_result_key_segment_is_the_quoted_node_id(nodeid: str) -> None:
    """The ASCII fast path keys results exactly as ``quote`` did: earlier runs stay readable."""
    segment = encode_nodeid(nodeid)
    assert segment == quote(nodeid, safe="")
    assert "/" not in segment and decode_nodeid(segment) == nodeid


@pytest.mark.parametrize("value", ["1", "true", "yes", "paused by ops"])
def test_true_flag_values(store: StateStore, etcdctl: Etcdctl, prefix: str, value: str) -> None:
    etcdctl("put", f"{prefix}/runs/r1/paused", value)
    assert store.check_flag("r1", "paused") is True


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no", "off", "Off", ""])
def test_false_flag_values(store: StateStore, etcdctl: Etcdctl, prefix: str, value: str) -> None:
    etcdctl("put", f"{prefix}/runs/r1/paused", "--", value)
    assert store.check_flag("r1", "paused") is False


def hold_lease(store: StateStore, run_id: str) -> int:
    """Own a run the way the plugin does: ``<run>/lease`` on a lease (60 s, revoke to end)."""
    lease = store.gateway.lease_grant(60)
    store.gateway.put(store.keys(run_id).lease, json.dumps({"lease": lease}), lease)
    return lease


def test_missing_flag_is_false(store: StateStore) -> None:
    assert store.check_flag("never-written", "cancelled") is False


def test_set_and_clear_flag_are_visible_to_etcdctl(
    store: StateStore, etcdctl: Etcdctl, prefix: str
) -> None:
    hold_lease(store, "r1")
    store.set_status("r1", "RUNNING")
    store.set_flag("r1", "paused")
    assert etcdctl.get(f"{prefix}/runs/r1/paused") == "1"
    store.clear_flag("r1", "paused")
    assert etcdctl.get(f"{prefix}/runs/r1/paused") is None


def test_flags_of_an_unknown_run_are_refused(store: StateStore, etcdctl: Etcdctl) -> None:
    with pytest.raises(UnknownRun, match="no run 'nobody'"):
        store.set_flag("nobody", "paused")
    with pytest.raises(UnknownRun):
        store.request_flag("nobody", "cancelled", on=True)
    assert store.run_exists("nobody") is False  # nothing was written


def test_flags_of_an_ended_run_are_refused(
    store: StateStore, etcdctl: Etcdctl, prefix: str
) -> None:
    store.set_status("r1", "COMPLETED")
    with pytest.raises(RunEnded, match=r"run r1 already ended \(COMPLETED\)"):
        store.set_flag("r1", "cancelled")
    with pytest.raises(RunEnded):
        store.clear_flag("r1", "paused")
    assert etcdctl.get(f"{prefix}/runs/r1/cancelled") is None


def test_request_flag_answers_the_previous_state(
    store: StateStore, etcdctl: Etcdctl, prefix: str
) -> None:
    etcdctl("put", f"{prefix}/runs/r1/results/t.py%3A%3Aa", "{}")  # a run without a status yet
    assert store.request_flag("r1", "paused", on=True) is False
    assert store.request_flag("r1", "paused", on=True) is True
    assert store.request_flag("r1", "paused", on=False) is True
    assert etcdctl.get(f"{prefix}/runs/r1/paused") is None


def test_wait_for_flag_wakes_on_etcdctl_write(
    store: StateStore, etcdctl: Etcdctl, prefix: str
) -> None:
    writer = threading.Timer(0.2, etcdctl, args=("put", f"{prefix}/runs/r1/cancelled", "1"))
    writer.start()
    started = time.monotonic()
    assert store.wait_for_flag("r1", "cancelled", state=True, timeout=10) is True
    assert time.monotonic() - started < 5
    writer.join()


def test_wait_for_flag_returns_false_on_timeout(store: StateStore) -> None:
    started = time.monotonic()
    assert store.wait_for_flag("r1", "paused", state=True, timeout=0.3) is False
    assert 0.25 < time.monotonic() - started < 3


def test_wait_for_flag_already_in_state_returns_at_once(store: StateStore) -> None:
    assert store.wait_for_flag("r1", "paused", state=False, timeout=0) is True


def test_wait_for_flag_on_watched_run_uses_local_view(
    store: StateStore, etcdctl: Etcdctl, prefix: str
) -> None:
    view = store.watch_run("r1")
    etcdctl("put", f"{prefix}/runs/r1/paused", "1")
    assert store.wait_for_flag("r1", "paused", state=True, timeout=5)
    assert flag_is_true(view.get(f"{prefix}/runs/r1/paused"))
    etcdctl("del", f"{prefix}/runs/r1/paused")
    assert store.wait_for_flag("r1", "paused", state=False, timeout=5)
    assert store.check_flag("r1", "paused") is False


def test_status_round_trip_and_validation(store: StateStore, etcdctl: Etcdctl, prefix: str) -> None:
    lease = hold_lease(store, "r1")
    store.set_status("r1", "PAUSED")
    assert store.get_status("r1") == "PAUSED"
    assert etcdctl.get(f"{prefix}/runs/r1/status") == "PAUSED"
    store.gateway.lease_revoke(lease)  # what etcd does when the run's process dies
    assert store.get_status("r1") == "INTERRUPTED"
    assert etcdctl.get(f"{prefix}/runs/r1/status") == "PAUSED"  # the key is left as it was
    with pytest.raises(RunDied, match=r"run r1 is not running \(its process died"):
        store.set_flag("r1", "paused")
    with pytest.raises(ValueError, match="unknown status 'DONE'"):
        store.set_status("r1", "DONE")


@pytest.mark.parametrize("bad", ["../x", "a/b", "a b", "", "-lead", "x" * 129])
def test_invalid_run_ids_are_refused(store: StateStore, bad: str) -> None:
    with pytest.raises(InvalidRunId, match="must match"):
        store.check_flag(bad, "paused")


def test_unreachable_etcd_raises_clear_error_quickly_at_first_use() -> None:
    store = StateStore("127.0.0.1:1")  # connects on first use, not here
    started = time.monotonic()
    with pytest.raises(EtcdUnavailable, match=r"127\.0\.0\.1:1: connection refused"):
        store.get_status("r1")
    assert time.monotonic() - started < 5
    store.close()


def test_key_writer_batches_and_flushes(store: StateStore, prefix: str) -> None:
    writer = KeyWriter(store.gateway)
    for i in range(250):
        writer.put(f"{prefix}/bulk/{i:04d}", str(i))
    writer.put(f"{prefix}/bulk/0000", "newest")
    assert writer.flush(timeout=10)
    values = store.gateway.range_prefix(f"{prefix}/bulk/").as_dict()
    assert len(values) == 250
    assert values[f"{prefix}/bulk/0000"] == b"newest"
    writer.close()


def test_watch_survives_etcd_sigkill_and_restart(etcd_factory, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """etcd3-py's own Watcher dies silently on a SIGKILLed etcd; ours re-reads and re-watches."""
    server = etcd_factory()
    store = StateStore(server.endpoint, prefix)
    changes: list[bool] = []
    key = f"{prefix}/runs/r1/paused"
    view = WatchedRange(store.gateway, key, on_connection_change=lambda up, _e: changes.append(up))
    view.start(store.gateway.range(key))
    wait_for(lambda: view.connected)
    server.kill()
    wait_for(lambda: changes == [True, False])
    server.start()
    Etcdctl(server.endpoint)("put", key, "1")
    assert view.wait_until(lambda values: flag_is_true(values.get(key)), timeout=5)
    wait_for(lambda: changes == [True, False, True])  # "connected" is reported after the read
    view.stop()
    store.close()


def test_watch_survives_etcd_sigterm_restart(etcd_factory, prefix: str) -> None:  # type: ignore[no-untyped-def]
    server = etcd_factory()
    store = StateStore(server.endpoint, prefix)
    key = f"{prefix}/runs/r1/cancelled"
    view = WatchedRange(store.gateway, key).start(store.gateway.range(key))
    wait_for(lambda: view.connected)
    server.stop()
    wait_for(lambda: not view.connected)
    server.start()
    Etcdctl(server.endpoint)("put", key, "1")
    assert view.wait_until(lambda values: flag_is_true(values.get(key)), timeout=5)
    view.stop()
    store.close()


def test_key_writer_retries_until_etcd_returns(etcd_factory, prefix: str) -> None:  # type: ignore[no-untyped-def]
    server = etcd_factory()
    store = StateStore(server.endpoint, prefix)
    writer = KeyWriter(store.gateway)
    server.kill()
    writer.put(f"{prefix}/late", "landed")
    assert writer.flush(timeout=0.5) is False
    server.start()
    assert writer.flush(timeout=10) is True
    assert Etcdctl(server.endpoint).get(f"{prefix}/late") == "landed"
    writer.close()
    store.close()


def test_lease_outlives_its_ttl_until_revoked(store: StateStore, prefix: str) -> None:
    lease = Lease.grant(store.gateway, ttl=2)
    store.gateway.put(f"{prefix}/held", "x", lease=lease.id)
    time.sleep(3)  # longer than the TTL: only the keep-alive thread holds it
    assert store.gateway.get(f"{prefix}/held") == b"x"
    assert not lease.done.is_set()
    lease.revoke()
    assert lease.done.is_set() and not lease.lost
    assert store.gateway.get(f"{prefix}/held") is None
    lease.revoke()  # twice is harmless


def test_lease_lost_sets_done_and_calls_back(store: StateStore) -> None:
    lost: list[Lease] = []
    lease = Lease.grant(store.gateway, ttl=2, on_lost=lost.append)
    store.gateway.lease_revoke(lease.id)  # as when it expired while etcd was away
    assert lease.done.wait(5)
    assert lease.lost and lost == [lease]
    lease.revoke()  # never raises, even for a lease etcd no longer has


def test_key_writer_put_lazy_writes_the_value_of_the_moment(store: StateStore, prefix: str) -> None:
    writer = KeyWriter(store.gateway)
    key = f"{prefix}/progress"
    state = {"n": 0}
    made: list[int] = []

    def produce() -> str:
        made.append(state["n"])
        return str(state["n"])

    for n in range(1, 200):
        state["n"] = n
        writer.put_lazy(key, produce, interval=5.0)  # longer than the test: only a flush writes
    assert writer.flush(timeout=10)
    assert store.gateway.get(key) == b"199"
    assert len(made) <= 2  # the first change at once, then the rest coalesced into one
    writer.close()


def test_key_writer_guarded_write_is_refused_alone(store: StateStore, prefix: str) -> None:
    """A failed guard refuses its own writes, never the others of its batch (nested txn)."""
    gateway = store.gateway
    mine = gateway.put(f"{prefix}/claim/1", "mine")
    lost = gateway.put(f"{prefix}/claim/2", "mine")
    gateway.put(f"{prefix}/claim/2", "taken over")  # its revision moved on
    writer = KeyWriter(gateway, min_interval=0.5)
    writer.put(f"{prefix}/warm-up", "x")
    assert writer.flush(timeout=10)  # the writer now pauses: what follows shares one txn
    settled: list[object] = []
    writer.put(f"{prefix}/plain", "p")
    kept = writer.write_guarded(
        [mod_revision_equals(f"{prefix}/claim/1", mine)],
        {f"{prefix}/done/1": "d", f"{prefix}/claim/1": None},
        on_done=settled.append,
    )
    refused = writer.write_guarded(
        [mod_revision_equals(f"{prefix}/claim/2", lost)],
        {f"{prefix}/done/2": "late", f"{prefix}/claim/2": None},
        reads=(f"{prefix}/claim/2", f"{prefix}/done/2"),
        on_done=settled.append,
    )
    assert writer.flush(timeout=10)
    assert (kept.written, refused.written) == (True, False)
    assert refused.found == {f"{prefix}/claim/2": b"taken over"}
    assert settled == [kept, refused]
    kvs = {kv.key: kv for kv in gateway.range_prefix(f"{prefix}/").kvs}
    assert {key: kv.value for key, kv in kvs.items() if "warm" not in key} == {
        f"{prefix}/plain": b"p",
        f"{prefix}/done/1": b"d",
        f"{prefix}/claim/2": b"taken over",
    }
    assert kvs[f"{prefix}/plain"].mod_revision == kvs[f"{prefix}/done/1"].mod_revision
    writer.close()


class _Owner:
    """A fence on ``<prefix>/owner == me``; a refusal is final."""

    def __init__(self, key: str) -> None:
        self.key = key

    def clauses(self) -> list[dict[str, object]]:
        return [value_equals(self.key, "me")]

    def refused(self) -> bool:
        return True


def test_fenced_out_writer_settles_guarded_writes_unsent(store: StateStore, prefix: str) -> None:
    store.gateway.put(f"{prefix}/owner", "someone else")
    writer = KeyWriter(store.gateway, fence=_Owner(f"{prefix}/owner"))
    write = writer.write_guarded([], {f"{prefix}/result": "late"})
    assert write.done.wait(10) and write.written is None
    assert writer.fenced and store.gateway.get(f"{prefix}/result") is None
    after = writer.write_guarded([], {f"{prefix}/result": "later"})
    assert after.done.is_set() and after.written is None
    writer.close()
