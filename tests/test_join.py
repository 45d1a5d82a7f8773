"""``--join``: one run on several real pytest processes sharing a real etcd.

Each test of the inner suite appends its node id and pid to a stamp file, so
"exactly once" is checked on what ran, not only on what was recorded.
"""

from __future__ import annotations

import json
import os
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

from .conftest import INNER_INI, stop_process, wait_for

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
    if os.environ.get("STALL") == str(n):
        time.sleep(float(os.environ["STALL_FOR"]))
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
