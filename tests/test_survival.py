"""What a run survives (issue 8): a refused second process, a stolen lease, dead runs.

Real pytest subprocesses against a real etcd; processes are refused,
stopped (SIGSTOP/SIGCONT) and killed (SIGKILL) for real.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from pytest_taskctl import StateStore

from .conftest import wait_for
from .suites import RunningSuite, suite_env


def files_digest(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` (by relative path)."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def etcd_snapshot(store: StateStore, run_id: str) -> dict[str, tuple[bytes, int]]:
    """Every key under ``<run>/`` with its value and mod revision."""
    kvs = store.gateway.range_prefix(store.keys(run_id).root + "/").kvs
    return {kv.key: (kv.value, kv.mod_revision) for kv in kvs}


def settled(read: object, quiet: float = 0.6, timeout: float = 15) -> object:
    """Poll ``read()`` until it returns the same value twice ``quiet`` seconds apart."""
    assert callable(read)
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError("never settled")


def test_refused_second_process_writes_nothing(
    tmp_path: Path, store: StateStore, taskctl_env: dict[str, str]
) -> None:
    live = RunningSuite(tmp_path, suite_env(taskctl_env), ["one", "two"], ["one"], "busy")
    live.start()
    try:
        live.wait_started("one")
        wait_for(lambda: store.get_status("busy") == "RUNNING")
        run_dir = tmp_path / "logs" / "busy"
        wait_for(lambda: (run_dir / "traces.jsonl").exists())

        def state() -> tuple[object, object]:
            return files_digest(run_dir), etcd_snapshot(store, "busy")

        before = settled(state)
        started = time.monotonic()
        refused = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--run-id", "busy",
             "test_suite.py"],
            cwd=tmp_path, env=live.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 4, refused.stdout + refused.stderr
        assert "refusing starting run busy: it is still running" in refused.stderr
        assert "INTERNALERROR" not in refused.stdout + refused.stderr
        assert time.monotonic() - started < 30
        assert state() == before  # byte-identical files, identical keys and revisions
        live.release("one")
        assert "2 passed" in live.finish()
    finally:
        live.kill()
    assert live.returncode == 0
    # The live run's own trace has exactly one session span: the refused one left none.
    sessions = [
        span
        for line in (tmp_path / "logs" / "busy" / "traces.jsonl").read_text().splitlines()
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
        if span["name"] == "pytest session"
    ]
    assert len(sessions) == 1


def results_of(store: StateStore, run_id: str) -> list[dict[str, object]]:
    kvs = store.gateway.range_prefix(store.keys(run_id).results).kvs
    return [json.loads(kv.value) for kv in kvs]


def test_a_process_that_lost_its_lease_writes_nothing_more(
    tmp_path: Path, store: StateStore, taskctl_env: dict[str, str]
) -> None:
    """SIGSTOP past the lease's TTL, another process takes the run over and ends it, SIGCONT."""
    env = suite_env({**taskctl_env, "PYTEST_TASKCTL_LEASE_TTL": "2"})
    keys = store.keys("stolen")
    first = RunningSuite(tmp_path / "first", env, ["a", "b", "c"], ["a"], "stolen")
    first.start()
    try:
        first.wait_started("a")
        wait_for(lambda: store.get_status("stolen") == "RUNNING")
        first.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        wait_for(lambda: not store.gateway.range(keys.lease).kvs, timeout=15)
        expired_after = time.monotonic() - stopped
        second = RunningSuite(tmp_path / "second", env, ["a", "b", "c"], [], "stolen").start()
        assert "3 passed" in second.finish()
        assert second.returncode == 0
        taken = store.get_meta("stolen")
        results = results_of(store, "stolen")
        assert taken is not None and taken["pid"] == second.process.pid  # type: ignore[union-attr]
        assert len(results) == 3
        first.signal(signal.SIGCONT)
        continued = time.time()
        first.release("a")
        output = first.finish()
    finally:
        first.kill()
    assert "3 passed" in output  # the tests themselves are not affected
    assert expired_after < 6
    # Nothing of the first process landed after it lost the run: the second's records win.
    assert store.get_meta("stolen") == taken
    assert store.get_status("stolen") == "COMPLETED"
    assert results_of(store, "stolen") == results
    assert all(float(r["ended"]) < continued for r in results)  # type: ignore[arg-type]
    assert "run lease lost: another process owns run stolen; this process stops writing" in (
        first.log_text
    )
