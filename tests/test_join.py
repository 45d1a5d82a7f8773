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

import pytest

from pytest_taskctl import StateStore
from pytest_taskctl.keys import RunKeys

from .conftest import results_of, stop_process, wait_for

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
    """3 processes x 45 tests of 0.2 s: each process runs a fair share.

    The wall time against the serial 9 s is printed, not asserted (a loaded CI
    machine must not fail it); ``benchmarks/join.py`` measures it.
    """
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


def test_sigkill_mid_test_requeues_and_a_test_that_kills_twice_is_given_up(
    ptr: pytest.Pytester, suite: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = suite
    # A short lease: each death is noticed when the dead process's lease expires, twice
    # here (the real TTL's promise has its own test below).
    env.update(COUNT="24", SLEEP="0.1", KILLER="3", PYTEST_TASKCTL_LEASE_TTL="3")
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


# -- --join --thread N ----------------------------------------------------------------------

THREADED_CONFTEST = """
import os, threading, time
import pytest

def stamp(kind, name):
    line = f"{kind} {name} {os.getpid()} {threading.current_thread().name} {time.monotonic():.4f}"
    with open(os.environ["STAMPS"], "a", encoding="utf-8") as f:
        f.write(line + "\\n")

def run(name):
    stamp("S", name)
    time.sleep(float(os.environ.get("SLEEP", "0")))
    if os.environ.get("KILLER") == name:
        os.kill(os.getpid(), 9)
    stamp("E", name)
    assert name not in os.environ.get("FAIL", "").split(",")

@pytest.fixture(scope="module")
def shared(request):
    stamp("setup", request.module.__name__)
    yield
    stamp("teardown", request.module.__name__)
"""

THREADED_MODULE = """
import os
import pytest
from conftest import run
{mark}
@pytest.mark.parametrize("n", range(int(os.environ.get("COUNT", "8"))))
def test_t(n, shared):
    run("{prefix}%d" % n)
"""

#: Two threads per process; ``test_serial`` is one group, ``test_free``'s tests are ungrouped.
THREADED = ("--thread", "2", "--group-unit", "function")


@pytest.fixture
def threaded(ptr: pytest.Pytester, taskctl_env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    ptr.makeconftest(THREADED_CONFTEST)
    ptr.makepyfile(
        test_serial=THREADED_MODULE.format(
            mark='pytestmark = pytest.mark.group("serial")', prefix="s"
        ),
        test_free=THREADED_MODULE.format(mark="", prefix="f"),
    )
    stamps = ptr.path / "stamps.txt"
    return stamps, {**taskctl_env, "STAMPS": str(stamps)}


def events_of(path: Path) -> list[tuple[str, str, int, str, float]]:
    """``(kind, name, pid, thread, monotonic time)`` per line: S/E of a test, module set-ups."""
    if not path.exists():
        return []
    return [
        (kind, name, int(pid), thread, float(at))
        for kind, name, pid, thread, at in (line.split() for line in path.read_text().splitlines())
    ]


def ended(path: Path) -> Counter[str]:
    return Counter(name for kind, name, *_ in events_of(path) if kind == "E")


def most_at_once(events: list[tuple[str, str, int, str, float]], pid: int, prefix: str) -> int:
    """How many tests named ``prefix...`` ran at once in process ``pid`` at most."""
    running = most = 0
    for kind, name, owner, _, _ in sorted(events, key=lambda e: (e[4], e[0] == "S")):
        if owner == pid and name.startswith(prefix) and kind in "SE":
            running += 1 if kind == "S" else -1
            most = max(most, running)
    return most


def module_fixture_brackets_its_tests(
    events: list[tuple[str, str, int, str, float]], pid: int, module: str, prefix: str
) -> bool:
    """In ``pid``, the module fixture is set up before each of its tests and torn down after.

    Set up and torn down in turn, ending torn down; every test of the module
    runs between a set-up and the next tear-down.
    """
    mine = sorted((e for e in events if e[2] == pid), key=lambda e: e[4])
    up = False
    for kind, name, *_ in mine:
        if name == module and kind in ("setup", "teardown"):
            if up == (kind == "setup"):
                return False
            up = kind == "setup"
        elif name.startswith(prefix) and kind in "SE" and not up:
            return False
    return not up


def test_two_processes_on_two_threads_run_each_test_once(
    ptr: pytest.Pytester, threaded: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = threaded
    env.update(COUNT="12", SLEEP="0.1")
    processes = [start(ptr.path, env, "jt-once", *THREADED) for _ in range(2)]
    outcomes = finish(processes)
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    names = [f"{prefix}{n}" for prefix in "sf" for n in range(12)]
    assert ended(stamps) == Counter(names)  # every test exactly once
    events = events_of(stamps)
    tests = [e for e in events if e[0] == "E"]
    assert {pid for _, _, pid, _, _ in tests} == {p.pid for p in processes}
    workers = {(pid, thread) for _, _, pid, thread, _ in tests}
    assert len(workers) >= 3, workers  # both processes, and their threads, took part
    assert max(most_at_once(events, p.pid, "") for p in processes) == 2
    for process in processes:  # a group is kept apart on the threads of each process
        assert most_at_once(events, process.pid, "s") <= 1
        assert module_fixture_brackets_its_tests(events, process.pid, "test_serial", "s")
        assert module_fixture_brackets_its_tests(events, process.pid, "test_free", "f")
    results = results_of(store, "jt-once")
    assert len(results) == 24 and {r["outcome"] for r in results.values()} == {"passed"}
    assert store.get_status("jt-once") == "COMPLETED"
    keys = RunKeys(store.prefix, "jt-once")
    assert not store.gateway.range_prefix(keys.queue + "claim/").kvs  # every claim acknowledged


def test_threaded_failure_fails_only_the_process_that_ran_it(
    ptr: pytest.Pytester, threaded: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = threaded
    env.update(COUNT="6", SLEEP="0.05", FAIL="f4")
    processes = [start(ptr.path, env, "jt-fail", *THREADED) for _ in range(2)]
    codes = {p.pid: code for p, (code, _) in zip(processes, finish(processes), strict=True)}
    failed_in = next(
        pid for kind, name, pid, *_ in events_of(stamps) if (kind, name) == ("E", "f4")
    )
    assert codes == {pid: 1 if pid == failed_in else 0 for pid in codes}, codes
    assert ended(stamps) == Counter(f"{prefix}{n}" for prefix in "sf" for n in range(6))
    assert results_of(store, "jt-fail")["test_free.py::test_t[4]"]["outcome"] == "failed"
    assert store.get_status("jt-fail") == "FAILED"


def test_cancel_stops_every_thread_of_every_process(
    ptr: pytest.Pytester, threaded: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = threaded
    env.update(COUNT="20", SLEEP="0.3")
    processes = [start(ptr.path, env, "jt-cancel", *THREADED) for _ in range(2)]
    try:
        wait_for(lambda: len(ended(stamps)) >= 4, timeout=30)
        store.set_flag("jt-cancel", "cancelled")
    finally:
        outcomes = finish(processes)
    assert [code for code, _ in outcomes] == [2, 2], outcomes
    assert sum(ended(stamps).values()) < 40
    assert store.get_status("jt-cancel") == "CANCELLED"


def test_pause_holds_every_thread_of_every_process_then_resume(
    ptr: pytest.Pytester, threaded: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = threaded
    env.update(COUNT="15", SLEEP="0.2")
    processes = [start(ptr.path, env, "jt-pause", *THREADED) for _ in range(2)]
    workers_key = RunKeys(store.prefix, "jt-pause").workers

    def states() -> set[str]:
        records = [json.loads(kv.value) for kv in store.gateway.range_prefix(workers_key).kvs]
        return {r["state"] for r in records} if len(records) == 2 else set()

    try:
        wait_for(lambda: len(ended(stamps)) >= 4, timeout=30)
        store.set_flag("jt-pause", "paused")
        wait_for(lambda: states() == {"PAUSED"}, timeout=15)  # no thread runs a test
        wait_for(lambda: store.get_status("jt-pause") == "PAUSED", timeout=10)  # the run too
        events = events_of(stamps)
        assert sum(kind == "S" for kind, *_ in events) == sum(kind == "E" for kind, *_ in events)
        assert len(ended(stamps)) < 30
        store.clear_flag("jt-pause", "paused")
    finally:
        outcomes = finish(processes)
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert ended(stamps) == Counter(f"{prefix}{n}" for prefix in "sf" for n in range(15))
    assert store.get_status("jt-pause") == "COMPLETED"


def test_resume_of_a_threaded_joined_run_runs_only_what_did_not_pass(
    ptr: pytest.Pytester, threaded: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    stamps, env = threaded
    env.update(COUNT="6", FAIL="f2,s3")
    first = finish([start(ptr.path, env, "jt-resume", *THREADED) for _ in range(2)])
    assert sorted(code for code, _ in first) in ([0, 1], [1, 1]), first
    stamps.unlink()
    env.pop("FAIL")
    second = finish([start(ptr.path, env, "jt-resume", "--resume", *THREADED) for _ in range(2)])
    assert [code for code, _ in second] == [0, 0], second
    assert ended(stamps) == Counter(["f2", "s3"])
    results = results_of(store, "jt-resume")
    assert len(results) == 12 and {r["outcome"] for r in results.values()} == {"passed"}
    assert store.get_status("jt-resume") == "COMPLETED"


def test_threaded_process_killed_by_a_test_charges_its_running_tests(
    ptr: pytest.Pytester, threaded: tuple[Path, dict[str, str]], store: StateStore
) -> None:
    """A death charges the tests that were running; a charged test then runs alone.

    So the test beside the killer is charged once and passes when run again,
    and the killer, alone the second time, is given up on after two deaths.
    """
    stamps, env = threaded
    env.update(COUNT="8", SLEEP="0.1", KILLER="f3", PYTEST_TASKCTL_LEASE_TTL="3")  # see above
    processes = [start(ptr.path, env, "jt-kill", *THREADED) for _ in range(3)]
    outcomes = finish(processes, timeout=120)
    assert sorted(code for code, _ in outcomes) == [-signal.SIGKILL, -signal.SIGKILL, 1], outcomes
    events = events_of(stamps)
    starts = Counter(name for kind, name, *_ in events if kind == "S")
    assert starts["f3"] == 2 and "f3" not in ended(stamps)
    survivor = next(p.pid for p, (code, _) in zip(processes, outcomes, strict=True) if code == 1)
    in_survivor = Counter(name for kind, name, pid, *_ in events if kind == "E" and pid == survivor)
    assert max(in_survivor.values()) == 1  # a test ended twice only if a killed process ran it
    assert set(ended(stamps)) == {f"{prefix}{n}" for prefix in "sf" for n in range(8)} - {"f3"}
    second = [e for e in events if e[0] == "S" and e[1] == "f3"][1]
    for kind, name, pid, _, at in events:  # the second time, f3 ran alone in its process
        if kind == "E" and pid == second[2] and name != "f3":
            assert at < second[4]
    results = results_of(store, "jt-kill")
    assert len(results) == 16
    assert [n for n, r in results.items() if r["outcome"] != "passed"] == [
        "test_free.py::test_t[3]"
    ]
    assert "died 2 times" in results["test_free.py::test_t[3]"]["reason"]
    assert store.get_status("jt-kill") == "FAILED"


def test_join_with_xdist_stays_a_usage_error(ptr: pytest.Pytester) -> None:
    result = ptr.runpytest_subprocess("--run-id", "jt-xdist", "--join", "--thread", "2", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--join is incompatible with pytest-xdist*"])
