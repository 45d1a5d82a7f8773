"""``--join`` and pause: the run reads PAUSED once no test runs in any joined process.

Two real pytest processes share a real etcd; the flag is written through the
project's :class:`~pytest_taskctl.StateStore`, the status read back as
``taskctl status --json`` shows it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_taskctl import StateStore

from .conftest import wait_for
from .test_join import SUITE, finish, stamps_of, start

#: Test 0 waits for ``GATE`` the first time it runs (in the first process), not the second.
GATED_SUITE = """
import os, time
from pathlib import Path
import pytest

def _stamp(name):
    with open(os.environ["STAMPS"], "a", encoding="utf-8") as f:
        f.write(f"{name} {os.getpid()}\\n")

@pytest.mark.parametrize("n", range(16))
def test_t(n):
    _stamp(f"t{n}")
    gate = Path(os.environ["GATE"])
    if n == 0 and not gate.with_suffix(".ran").exists():
        gate.with_suffix(".ran").touch()
        deadline = time.monotonic() + 60
        while not gate.exists():
            assert time.monotonic() < deadline, "gate never opened"
            time.sleep(0.01)
    time.sleep(float(os.environ.get("SLEEP", "0.2")))
"""


@pytest.fixture
def joined(ptr: pytest.Pytester, taskctl_env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """``test_join``'s suite: the stamp file and the environment of its processes."""
    ptr.makepyfile(test_suite=SUITE)
    stamps = ptr.path / "stamps.txt"
    return stamps, {**taskctl_env, "STAMPS": str(stamps)}


def status_json(env: dict[str, str], run_id: str) -> dict[str, Any]:
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_taskctl.cli", "status", run_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    record: dict[str, Any] = json.loads(shown.stdout)
    return record


def test_pause_of_joined_processes_reads_paused_then_running(
    ptr: pytest.Pytester,
    joined: tuple[Path, dict[str, str]],
    store: StateStore,
    taskctl_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The run is PAUSED once every joined process waits at its gate, RUNNING after resume."""
    stamps, env = joined
    env.update(COUNT="40", SLEEP="0.1")
    processes = [start(ptr.path, env, "j-pause") for _ in range(2)]
    try:
        wait_for(lambda: len({pid for _, pid in stamps_of(stamps)}) == 2, timeout=30)
        asked = time.monotonic()
        store.set_flag("j-pause", "paused")
        wait_for(lambda: store.get_status("j-pause") == "PAUSED", timeout=10)
        paused_after = time.monotonic() - asked
        held = len(stamps_of(stamps))
        record = status_json(taskctl_env, "j-pause")
        assert record["status"] == "PAUSED"
        assert [w["state"] for w in record["workers"]] == ["PAUSED", "PAUSED"], record
        assert 0 < held < 40 and len(stamps_of(stamps)) == held  # nothing started meanwhile
        resumed = time.monotonic()
        store.clear_flag("j-pause", "paused")
        wait_for(lambda: store.get_status("j-pause") == "RUNNING", timeout=10)
        running_after = time.monotonic() - resumed
        wait_for(lambda: len(stamps_of(stamps)) > held, timeout=10)
    finally:
        outcomes = finish(processes)
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert Counter(name for name, _ in stamps_of(stamps)) == Counter(
        {f"t{n}": 1 for n in range(40)}
    )
    assert store.get_status("j-pause") == "COMPLETED"
    with capsys.disabled():
        print(
            f"\njoin pause: PAUSED {paused_after:.2f} s after the flag, RUNNING "
            f"{running_after:.2f} s after its deletion"
        )


def test_a_joined_run_is_paused_only_once_no_test_runs_anywhere(
    ptr: pytest.Pytester,
    joined: tuple[Path, dict[str, str]],
    store: StateStore,
    taskctl_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One process idles (its tests are done), one is in a long test: RUNNING until it ends."""
    stamps, env = joined
    ptr.makepyfile(test_suite=GATED_SUITE)
    gate = ptr.path / "gate"
    env.update(GATE=str(gate), SLEEP="0.02")
    busy = start(ptr.path, env, "j-idle")  # claims t0..t3 alone; t0 waits for the gate
    processes = [busy]
    try:
        wait_for(lambda: ("t0", busy.pid) in stamps_of(stamps), timeout=30)
        processes.append(start(ptr.path, env, "j-idle"))
        wait_for(lambda: len(stamps_of(stamps)) == 13, timeout=30)  # t4..t15: the other's
        store.set_flag("j-idle", "paused")
        pid_of = {w["pid"]: w for w in status_json(taskctl_env, "j-idle")["workers"]}

        def states() -> tuple[str, str]:
            workers = {w["pid"]: w["state"] for w in status_json(taskctl_env, "j-idle")["workers"]}
            return workers[busy.pid], workers[processes[1].pid]

        wait_for(lambda: states() == ("RUNNING", "PAUSED"), timeout=10)  # idle counts as paused
        assert store.get_status("j-idle") == "RUNNING"  # a test runs: not PAUSED
        assert set(pid_of) == {p.pid for p in processes}
        gate.touch()
        opened = time.monotonic()
        wait_for(lambda: store.get_status("j-idle") == "PAUSED", timeout=10)
        paused_after = time.monotonic() - opened
        assert states() == ("PAUSED", "PAUSED")
        assert len(stamps_of(stamps)) == 13  # t1..t3 wait at the gate
        store.clear_flag("j-idle", "paused")
    finally:
        outcomes = finish(processes)
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert sorted(name for name, _ in stamps_of(stamps)) == sorted(f"t{n}" for n in range(16))
    assert store.get_status("j-idle") == "COMPLETED"
    with capsys.disabled():
        print(f"\njoin pause: PAUSED {paused_after:.2f} s after the last running test was let go")
    assert paused_after < 5
