"""``--join``: one run on several real pytest processes sharing a real etcd.

Each test of the inner suite appends its node id and pid to a stamp file, so
"exactly once" is checked on what ran, not only on what was recorded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_taskctl import StateStore
from pytest_taskctl.keys import RunKeys

from .conftest import stop_process, wait_for

SUITE = """
import os, time
import pytest

def _stamp(name):
    with open(os.environ["STAMPS"], "a", encoding="utf-8") as f:
        f.write(f"{name} {os.getpid()}\\n")

@pytest.mark.parametrize("n", range(int(os.environ.get("COUNT", "30"))))
def test_t(n):
    _stamp(f"t{n}")
    time.sleep(float(os.environ.get("SLEEP", "0")))
    if os.environ.get("KILLER") == str(n):
        os.kill(os.getpid(), 9)
    assert str(n) not in os.environ.get("FAIL", "").split(",")
"""


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


def start(path: Path, env: dict[str, str], run_id: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--run-id", run_id]
        + ["--join", *extra],
        cwd=path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(processes: list[subprocess.Popen[str]], timeout: float = 90) -> list[tuple[int, str]]:
    done = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=timeout)
            done.append((process.returncode, out))
    finally:
        for process in processes:
            stop_process(process)
    return done


def stamps_of(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [
        (name, int(pid))
        for name, pid in (line.split() for line in path.read_text().split("\n") if line)
    ]


def results_of(store: StateStore, run_id: str) -> dict[str, dict[str, Any]]:
    keys = RunKeys(store.prefix, run_id)
    kvs = store.gateway.range_prefix(keys.results).kvs
    return {r["nodeid"]: r for r in (json.loads(kv.value) for kv in kvs)}


@pytest.fixture
def suite(ptr: pytest.Pytester, taskctl_env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    ptr.makepyfile(test_suite=SUITE)
    stamps = ptr.path / "stamps.txt"
    return stamps, {**taskctl_env, "STAMPS": str(stamps)}


def test_three_processes_run_each_test_exactly_once(
    ptr: pytest.Pytester, suite: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = suite
    env.update(COUNT="40", SLEEP="0.02")
    outcomes = finish([start(ptr.path, env, "j-once") for _ in range(3)])
    for code, out in outcomes:
        assert code == 0, out
    ran = Counter(name for name, _ in stamps_of(stamps))
    assert ran == Counter({f"t{n}": 1 for n in range(40)})
    pids = Counter(pid for _, pid in stamps_of(stamps))
    assert len(pids) == 3, pids  # every process took a share
    results = results_of(store, "j-once")
    assert sorted(results) == sorted(f"test_suite.py::test_t[{n}]" for n in range(40))
    assert {r["outcome"] for r in results.values()} == {"passed"}
    assert store.get_status("j-once") == "COMPLETED"


def test_fair_share_of_slow_tests(
    ptr: pytest.Pytester, suite: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """3 processes x 45 tests of 0.2 s: close to a third of the 9 s serial time."""
    stamps, env = suite
    env.update(COUNT="45", SLEEP="0.2")
    started = time.monotonic()
    outcomes = finish([start(ptr.path, env, "j-fair") for _ in range(3)])
    wall = time.monotonic() - started
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    shares = sorted(Counter(pid for _, pid in stamps_of(stamps)).values())
    serial = 45 * 0.2
    with capsys.disabled():
        print(
            f"\njoin fair share: wall {wall:.2f} s vs serial {serial:.1f} s "
            f"({wall / serial:.2f}), shares {shares}"
        )
    assert sum(shares) == 45 and min(shares) >= 10, shares
    assert wall < 0.6 * serial


def test_sigkill_mid_test_requeues_and_a_test_that_kills_twice_is_given_up(
    ptr: pytest.Pytester, suite: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = suite
    env.update(COUNT="24", SLEEP="0.1", KILLER="3")
    processes = [start(ptr.path, env, "j-kill") for _ in range(3)]
    outcomes = finish(processes, timeout=120)
    codes = sorted(code for code, _ in outcomes)
    assert codes == [-signal.SIGKILL, -signal.SIGKILL, 1], outcomes
    ran = Counter(name for name, _ in stamps_of(stamps))
    assert ran.pop("t3") == 2  # handed out twice, killed its process twice
    assert ran == Counter({f"t{n}": 1 for n in range(24) if n != 3})
    results = results_of(store, "j-kill")
    assert len(results) == 24
    killer = results["test_suite.py::test_t[3]"]
    assert killer["outcome"] == "error"
    assert "died 2 times" in killer["reason"]
    survivor = next(out for code, out in outcomes if code == 1)
    assert "test_t[3] ERROR: its process died 2 times" in survivor
    assert store.get_status("j-kill") == "FAILED"


def test_dead_process_claims_run_elsewhere_within_15_s(
    ptr: pytest.Pytester, suite: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = suite
    env.update(COUNT="30", SLEEP="0.3")
    victim = start(ptr.path, env, "j-dead")
    wait_for(lambda: len(stamps_of(stamps)) >= 1, timeout=30)
    others = [start(ptr.path, env, "j-dead") for _ in range(2)]
    wait_for(lambda: len(stamps_of(stamps)) >= 6, timeout=30)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.communicate()
    held = {name for name, pid in stamps_of(stamps) if pid == victim.pid}
    keys = RunKeys(store.prefix, "j-dead")

    def victim_claims() -> list[str]:
        claims = store.gateway.range_prefix(keys.queue + "claim/").kvs
        return [kv.key for kv in claims if f"-{victim.pid}-" in json.loads(kv.value)["w"]]

    assert victim_claims(), "the killed process held claims"
    wait_for(lambda: not victim_claims(), timeout=15)  # its lease expired: claims requeued
    requeued_within = time.monotonic() - killed_at
    outcomes = finish(others)
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    ran = Counter(name for name, _ in stamps_of(stamps))
    assert set(ran) == {f"t{n}" for n in range(30)}
    assert all(count == 1 for name, count in ran.items() if name not in held)
    assert requeued_within < 15
    assert len(results_of(store, "j-dead")) == 30


def test_collection_mismatch_and_plain_run_are_refused(
    ptr: pytest.Pytester, suite: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = suite
    env.update(COUNT="5", SLEEP="0.6")
    first = start(ptr.path, env, "j-plan")
    try:
        keys = RunKeys(store.prefix, "j-plan")
        wait_for(lambda: store.gateway.get(keys.plan), timeout=30)
        other = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "--run-id",
                "j-plan",
                "--join",
            ],
            cwd=ptr.path,
            env={**env, "COUNT": "6"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 4, other.stdout + other.stderr
        assert "collected 6 tests, the run's plan has 5" in other.stderr
        assert "then here also 'test_suite.py::test_t[5]'" in other.stderr
        plain = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--run-id", "j-plan"],
            cwd=ptr.path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert plain.returncode == 4, plain.stdout + plain.stderr
        assert "still running" in plain.stderr
    finally:
        ((code, out),) = finish([first])
    assert code == 0, out
    assert len(stamps_of(stamps)) == 5


def test_cancel_stops_every_process_and_status_lists_workers(
    ptr: pytest.Pytester,
    suite: tuple[Path, dict[str, str]],
    store: StateStore,
    taskctl_env: dict[str, str],
) -> None:
    stamps, env = suite
    env.update(COUNT="40", SLEEP="0.3")
    processes = [start(ptr.path, env, "j-cancel") for _ in range(3)]
    try:
        wait_for(lambda: len(stamps_of(stamps)) >= 6, timeout=30)
        shown = subprocess.run(
            [sys.executable, "-m", "pytest_taskctl.cli", "status", "j-cancel", "--json"],
            env=taskctl_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.returncode == 0, shown.stderr
        record = json.loads(shown.stdout)
        assert record["status"] == "RUNNING"
        workers = record["workers"]
        assert {w["pid"] for w in workers} == {p.pid for p in processes}
        assert all(w["state"] in ("RUNNING", "IDLE") and w["host"] for w in workers)
        assert record["counts"]["total"] == 40
        store.set_flag("j-cancel", "cancelled")
    finally:
        outcomes = finish(processes)
    assert [code for code, _ in outcomes] == [2, 2, 2], outcomes
    assert len(stamps_of(stamps)) < 40
    assert store.get_status("j-cancel") == "CANCELLED"


def test_resume_of_a_joined_run_runs_only_what_did_not_pass(
    ptr: pytest.Pytester, suite: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = suite
    env.update(COUNT="12", FAIL="2,7")
    first = finish([start(ptr.path, env, "j-resume") for _ in range(2)])
    assert sorted(code for code, _ in first) in ([0, 1], [1, 1]), first
    stamps.unlink()
    env.pop("FAIL")
    second = finish([start(ptr.path, env, "j-resume", "--resume") for _ in range(2)])
    assert [code for code, _ in second] == [0, 0], second
    assert sorted(name for name, _ in stamps_of(stamps)) == ["t2", "t7"]
    results = results_of(store, "j-resume")
    assert len(results) == 12 and {r["outcome"] for r in results.values()} == {"passed"}
    assert store.get_status("j-resume") == "COMPLETED"
