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

from .conftest import results_of, wait_for
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
    assert all(float(r["ended"]) < continued for r in results.values())
    assert "run lease lost: another process owns run stolen; this process stops writing" in (
        first.log_text
    )


TASKCTL = Path(sys.executable).parent / "taskctl"


def taskctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TASKCTL), *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_a_killed_run_reads_interrupted_and_its_flags_do_not_hold_the_next_attempt(
    tmp_path: Path, store: StateStore, taskctl_env: dict[str, str]
) -> None:
    """Pause, then kill -9: INTERRUPTED everywhere within 30 s; --resume is not held."""
    env = suite_env(taskctl_env)  # the real lease TTL (10 s)
    names = ["one", "two", "three"]
    dead = RunningSuite(tmp_path, env, names, ["one"], "dead-1").start()
    watch = None
    try:
        dead.wait_started("one")
        wait_for(lambda: store.get_status("dead-1") == "RUNNING")
        assert taskctl("pause", "dead-1", env=taskctl_env).returncode == 0
        watch = subprocess.Popen(
            [str(TASKCTL), "watch", "dead-1", "--interval", "0"],
            env=taskctl_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        dead.signal(signal.SIGKILL)
        killed = time.monotonic()
        dead.finish()

        def shown() -> object:
            shown = taskctl("status", "dead-1", "--json", env=taskctl_env)
            return json.loads(shown.stdout)["status"] == "INTERRUPTED"

        wait_for(shown, timeout=30, interval=0.5)
        shown_after = time.monotonic() - killed
        _, watch_err = watch.communicate(timeout=10)
        watch_after = time.monotonic() - killed
    finally:
        dead.kill()
        if watch is not None and watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert shown_after < 30 and watch_after < 30
    print(f"dead run shown INTERRUPTED {shown_after:.1f} s after SIGKILL; watch ended")
    assert watch.returncode == 1
    assert "run dead-1 is not running (its process died)" in watch_err
    record = json.loads(taskctl("status", "dead-1", "--json", env=taskctl_env).stdout)
    assert record["process_died"] is True and record["flags"]["paused"] is True
    runs = json.loads(taskctl("runs", "--json", env=taskctl_env).stdout)
    assert [r["status"] for r in runs if r["run_id"] == "dead-1"] == ["INTERRUPTED"]
    assert store.get_status("dead-1") == "INTERRUPTED"
    for verb in ("cancel", "pause", "resume"):
        refused = taskctl(verb, "dead-1", env=taskctl_env)
        assert refused.returncode == 1, refused.stderr
        assert "run dead-1 is not running (its process died" in refused.stderr
    assert not store.check_flag("dead-1", "cancelled")

    # The next attempt is not held by the dead attempt's pause, and writes its end down.
    again = RunningSuite(tmp_path, env, names, [], "dead-1", ("--resume",)).start()
    output = again.finish(timeout=60)
    assert again.returncode == 0, output
    assert "3 passed" in output
    assert "cleared paused='1' left over from an earlier attempt of run dead-1" in again.log_text
    meta = store.get_meta("dead-1")
    assert meta is not None
    assert [a["status"] for a in meta["attempts"]] == ["INTERRUPTED", "COMPLETED"]
    assert store.get_status("dead-1") == "COMPLETED"
