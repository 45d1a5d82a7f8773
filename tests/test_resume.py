"""Resume an interrupted run (seed 002) against a real etcd, and the run's lease.

The interrupted run is a real pytest subprocess killed with SIGKILL; the
attempts after it run in-process (``ptr``), so the exact set of tests each
attempt ran can be read from its reports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_taskctl import StateStore
from pytest_taskctl.etcd.gateway import put_op
from pytest_taskctl.etcd.server import EmbeddedEtcd
from pytest_taskctl.features.resume import result_json
from pytest_taskctl.keys import LONG_NODEID, RunKeys, nodeid_identity
from pytest_taskctl.outcome import TestOutcome

from .conftest import INNER_INI, results_of, wait_for


@pytest.mark.parametrize(
    "nodeid",
    [
        "t.py::test_a",
        't.py::test["quoted" \\ \n \x01]',
        "t.py::test[é 中文 \U0001f600]",
        "t.py::" + "x" * 600,
    ],
)
@pytest.mark.parametrize("extra", [None, {"worker": "w-1"}, {"reason": "died 3 times"}])
@pytest.mark.parametrize("duration", [0.1234567, 1e-07, 12345.0, float("nan")])
def test_result_record_text_is_what_json_makes_of_it(
    nodeid: str, extra: dict[str, str], duration: float
) -> None:
    """The hand-written record is the JSON text ``json.dumps`` made before: readers and files
    of earlier versions see the same records."""
    outcome = TestOutcome(word="failed", duration=duration)
    text = result_json(nodeid, outcome, 3, extra)
    record = json.loads(text)
    expected = {"nodeid": nodeid, "outcome": "failed", "status": "fail", "attempt": 3,
                "duration": round(duration, 6), "ended": record["ended"]}  # fmt: skip
    identity = nodeid_identity(nodeid)
    if identity != nodeid:
        expected["nodeid"] = nodeid[:200] + "..."
        expected["sha256"] = identity.removeprefix("sha256:")
    expected.update(extra or {})
    assert text == json.dumps(expected, ensure_ascii=False)


SUITE = """
import os, time
from pathlib import Path
import pytest

def _stamp(text):
    with open(os.environ["STAMPS"], "a", encoding="utf-8") as f:
        f.write(text + "\\n")

@pytest.fixture
def flaky_resource():
    _stamp("e1")
    if not os.environ.get("FIXED"):
        raise RuntimeError("resource down")

def test_p1(): _stamp("p1")
def test_f1():
    _stamp("f1")
    assert os.environ.get("FIXED"), "broken until FIXED"
def test_e1(flaky_resource): pass

@pytest.mark.parametrize("x", ["a/b", "c::d[e]"])
def test_p2(x): _stamp(f"p2[{x}]")

def test_gate():
    _stamp("gate")
    gate = Path(os.environ["GATES"]) / "gate"
    deadline = time.monotonic() + 60
    while os.environ.get("GATED") and not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.005)

def test_n1(): _stamp("n1")
def test_n2(): _stamp("n2")
"""

FIRST = ["p1", "f1", "e1", "p2[a/b]", "p2[c::d[e]]"]


def ran(result: pytest.RunResult) -> set[str]:
    """Node ids (after ``::``) of the tests an in-process run executed."""
    reports = result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
    return {r.nodeid.split("::", 1)[1] for r in reports if r.when == "setup"}


def meta_of(store: StateStore, run_id: str) -> dict:  # type: ignore[type-arg]
    return store.get_meta(run_id) or {}


@pytest.fixture
def stamps(ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = ptr.path / "stamps.txt"
    monkeypatch.setenv("STAMPS", str(path))
    monkeypatch.setenv("GATES", str(ptr.path))
    monkeypatch.delenv("GATED", raising=False)
    monkeypatch.delenv("FIXED", raising=False)
    return path


def test_sigkill_mid_suite_then_resume_until_complete(
    ptr: pytest.Pytester,
    stamps: Path,
    store: StateStore,
    taskctl_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ptr.makepyfile(test_suite=SUITE)
    env = {**taskctl_env, "STAMPS": str(stamps), "GATES": str(ptr.path), "GATED": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--run-id", "r-kill"],
        cwd=ptr.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: "gate" in stamps.read_text().split() if stamps.exists() else False, 30)
        # Each finished test's result is in etcd moments after its end, with no flush at exit.
        wait_for(lambda: len(results_of(store, "r-kill")) == len(FIRST), timeout=2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert stamps.read_text().split() == [*FIRST, "gate"]
    recorded = results_of(store, "r-kill")
    assert {r["nodeid"].split("::", 1)[1]: r["outcome"] for r in recorded.values()} == {
        "test_p1": "passed",
        "test_f1": "failed",
        "test_e1": "error",
        "test_p2[a/b]": "passed",
        "test_p2[c::d[e]]": "passed",
    }
    assert store.get_status("r-kill") == "RUNNING"  # what SIGKILL leaves behind

    # Attempt 2: the dead run's lease is noticed at once (same host, pid gone).
    second = ptr.runpytest("--run-id", "r-kill", "--resume")
    assert ran(second) == {"test_f1", "test_e1", "test_gate", "test_n1", "test_n2"}
    second.assert_outcomes(passed=3, failed=1, errors=1, deselected=3)
    second.stdout.fnmatch_lines(
        [
            "taskctl: resume: attempt 2 of run r-kill; 5 results from earlier attempts in etcd",
            "collected 8 items / 3 deselected / 5 selected",
            "resume: 3 passed earlier, 5 to run",
            "*2 test(s) of run r-kill have not passed yet; run them with: "
            "pytest --run-id r-kill --resume",
        ]
    )
    assert second.ret == pytest.ExitCode.TESTS_FAILED

    monkeypatch.setenv("FIXED", "1")
    third = ptr.runpytest("--run-id", "r-kill", "--run-until-complete")
    assert ran(third) == {"test_f1", "test_e1"}
    third.stdout.fnmatch_lines(
        [
            "resume: 6 passed earlier, 2 to run",
            "taskctl: resume: every test of run r-kill has now passed (attempt 3)",
        ]
    )
    assert third.ret == 0

    fourth = ptr.runpytest("--run-id", "r-kill", "--resume")
    assert ran(fourth) == set()
    assert fourth.ret == 0  # complete, not pytest's "no tests collected" (5)
    fourth.stdout.fnmatch_lines(
        [
            "resume: 8 passed earlier, 0 to run",
            "taskctl: resume: every test of run r-kill has passed (8 in earlier attempts); "
            "nothing left to run",
        ]
    )

    meta = meta_of(store, "r-kill")
    assert meta["attempt"] == 4
    attempts = meta["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert [a["status"] for a in attempts] == ["INTERRUPTED", "FAILED", "COMPLETED", "COMPLETED"]
    assert [a["resume"] for a in attempts] == [False, True, True, True]
    assert attempts[0]["pid"] == first.pid
    assert [a["counts"] for a in attempts[1:]] == [
        {"passed": 3, "failed": 2, "skipped": 0},
        {"passed": 2, "failed": 0, "skipped": 0},
        {"passed": 0, "failed": 0, "skipped": 0},
    ]
    assert [(a["collected"], a["deselected"], a["to_run"]) for a in attempts[1:]] == [
        (8, 3, 5),
        (8, 6, 2),
        (8, 8, 0),
    ]
    assert meta["left"] == 0
    assert store.get_status("r-kill") == "COMPLETED"

    # `taskctl status` shows every attempt and what is left.
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "taskctl"), "status", "r-kill"],
        env=taskctl_env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^left +0 test\(s\) not passed yet$", shown.stdout, re.M)
    assert re.search(r"^attempt 1 +INTERRUPTED: ", shown.stdout, re.M)
    assert re.search(
        r"^attempt 2 +FAILED: 3 passed, 2 failed, 0 skipped of 5 to run \(--resume\)$",
        shown.stdout,
        re.M,
    )
    shown_json = subprocess.run(
        [str(Path(sys.executable).parent / "taskctl"), "status", "r-kill", "--json"],
        env=taskctl_env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    record = json.loads(shown_json.stdout)
    assert [a["attempt"] for a in record["attempts"]] == [1, 2, 3, 4]
    assert record["attempt"] == 4 and record["left"] == 0
    assert not store.gateway.range(store.keys("r-kill").root + "/lease").kvs  # revoked at the end

    # Every attempt is its own session span, all with the run id, numbered.
    sessions = [
        span
        for line in (ptr.path / "logs" / "r-kill" / "traces.jsonl").read_text().splitlines()
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
        if span["name"] == "pytest session"
    ]
    attributes = [{a["key"]: a["value"] for a in span["attributes"]} for span in sessions]
    assert [a["pytest.run.attempt"]["intValue"] for a in attributes] == ["2", "3", "4"]
    assert {a["pytest.run_id"]["stringValue"] for a in attributes} == {"r-kill"}
    assert len({span["traceId"] for span in sessions}) == 3


ODD_IDS = """
import os, pytest

IDS = ["a/b", "x::y", "[z]", "q[1]/w::e", "L" * 3000]

@pytest.mark.parametrize("ok", [True, False], ids=["ok", "bad"])
@pytest.mark.parametrize("x", [pytest.param(i, id=i) for i in IDS])
def test_ünïcode(x, ok):
    assert ok or os.environ.get("FIXED")

class TestKlasse:
    @pytest.mark.parametrize("ok", [True, False], ids=["ok", "bad"])
    def test_m(self, ok):
        assert ok or os.environ.get("FIXED")
"""


def test_odd_and_very_long_nodeids_round_trip(
    ptr: pytest.Pytester, stamps: Path, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ptr.path / "sub" / "dïr").mkdir(parents=True)
    (ptr.path / "sub" / "dïr" / "test_ödd.py").write_text(ODD_IDS, encoding="utf-8")
    first = ptr.runpytest("--run-id", "odd")
    first.assert_outcomes(passed=6, failed=6)
    failed = {r.nodeid for r in first.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
              if r.when == "call" and r.failed}  # fmt: skip
    assert any("/" in n and "::" in n.split("[", 1)[1] for n in failed)
    assert any(len(n) > LONG_NODEID for n in failed)
    assert all(n.startswith("sub/dïr/test_ödd.py::") for n in failed)

    keys = store.keys("odd")
    stored = {kv.key for kv in store.gateway.range_prefix(keys.results).kvs}
    assert len(stored) == 12
    long_keys = [k for k in stored if k.startswith(keys.results + "#sha256-")]
    assert len(long_keys) == 2  # the two 3000-character ids, keyed by hash
    assert all(len(k) < 200 for k in long_keys)

    second = ptr.runpytest("--run-id", "odd", "--resume")
    rerun = {r.nodeid for r in second.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
             if r.when == "call"}  # fmt: skip
    assert rerun == failed
    second.assert_outcomes(failed=6, deselected=6)

    monkeypatch.setenv("FIXED", "1")
    ptr.runpytest("--run-id", "odd", "--resume").assert_outcomes(passed=6, deselected=6)
    last = ptr.runpytest("--run-id", "odd", "--resume")
    last.assert_outcomes(deselected=12)
    assert last.ret == 0


def test_result_keys_are_safe_and_unique() -> None:
    keys = RunKeys("/p", "r")
    nodeids = ["t.py::a/b", "t.py::a%2Fb", "t.py::a[#sha256-x]", "t.py::" + "é" * 600]
    made = [keys.result(n) for n in nodeids]
    assert len(set(made)) == len(made)
    assert all(k.startswith("/p/runs/r/results/") and "/" not in k[len("/p/runs/r/results/") :]
               for k in made)  # fmt: skip
    assert made[3].startswith("/p/runs/r/results/#sha256-")


def test_resume_without_history_runs_everything_with_a_note(ptr: pytest.Pytester) -> None:
    ptr.makepyfile("def test_a(): pass\ndef test_b(): pass\n")
    result = ptr.runpytest("--run-id", "fresh", "--resume")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "taskctl: resume: no earlier results for run fresh in etcd; running every test",
            "resume: 0 passed earlier, 2 to run",
        ]
    )


def test_resume_needs_a_run_id(ptr: pytest.Pytester) -> None:
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest("--resume")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--resume needs the id of the run to resume: pass --run-id ID*"])


def test_a_run_without_resume_starts_over(
    ptr: pytest.Pytester, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ptr.makepyfile(
        "import os\ndef test_alpha(): assert not os.environ.get('BREAK')\ndef test_beta(): pass\n"
    )
    ptr.runpytest("--run-id", "over").assert_outcomes(passed=2)
    monkeypatch.setenv("BREAK", "1")
    ptr.runpytest("--run-id", "over", "-k", "alpha").assert_outcomes(failed=1, deselected=1)
    assert meta_of(store, "over")["attempt"] == 1
    assert [r["nodeid"] for r in results_of(store, "over").values()] == [
        "test_a_run_without_resume_starts_over.py::test_alpha"
    ]
    monkeypatch.delenv("BREAK")
    # test_beta passed in the run before, not in this one: it runs again.
    result = ptr.runpytest("--run-id", "over", "--resume")
    assert ran(result) == {"test_alpha", "test_beta"}
    assert meta_of(store, "over")["attempt"] == 2


def test_without_etcd_resume_uses_the_local_record(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(INNER_INI)
    monkeypatch.delenv("PYTEST_RUN_ID", raising=False)
    pytester.makepyfile(
        "import os\ndef test_a(): pass\ndef test_b(): assert os.environ.get('FIXED')\n"
    )
    offline = ("--taskctl-etcd", "127.0.0.1:1", "--run-id", "off")
    pytester.runpytest(*offline).assert_outcomes(passed=1, failed=1)
    record = pytester.path / "logs" / "off" / "results.jsonl"
    assert [json.loads(line)["type"] for line in record.read_text().splitlines()] == [
        "attempt",
        "result",
        "result",
    ]
    monkeypatch.setenv("FIXED", "1")
    result = pytester.runpytest(*offline, "--resume")
    assert ran(result) == {"test_b"}
    result.stdout.fnmatch_lines(
        [
            f"taskctl: resume: etcd unreachable; using the local record {record} "
            "(attempt 2 of run off)",
            "resume: 1 passed earlier, 1 to run",
        ]
    )
    assert result.ret == 0


def test_resume_of_a_live_run_is_refused(
    tmp_path: Path, ptr: pytest.Pytester, store: StateStore, taskctl_env: dict[str, str]
) -> None:
    from .suites import RunningSuite, suite_env

    live = RunningSuite(tmp_path / "live", suite_env(taskctl_env), ["one", "two"], ["one"], "busy")
    live.start()
    try:
        live.wait_started("one")
        meta_before = wait_for(lambda: meta_of(store, "busy"))
        assert isinstance(meta_before, dict)
        ptr.makepyfile("def test_x(): pass\n")
        for args in (("--resume",), ()):
            refused = ptr.runpytest("--run-id", "busy", *args)
            assert refused.ret == pytest.ExitCode.USAGE_ERROR
            what = "--resume of" if args else "starting"
            refused.stderr.fnmatch_lines(
                [
                    f"ERROR: taskctl: refusing {what} run busy: it is still running on "
                    f"{socket.gethostname()} (pid {live.process.pid}), since *"  # type: ignore[union-attr]
                ]
            )
            assert "test_x" not in refused.stdout.str()
        # Nothing of the live run was touched.
        assert store.get_status("busy") == "RUNNING"
        assert meta_of(store, "busy")["pid"] == meta_before["pid"] == live.process.pid  # type: ignore[union-attr]
        live.release("one")
        assert "2 passed" in live.finish()
        assert live.returncode == 0
    finally:
        live.kill()
    # Ended: its lease is gone and the run can be resumed.
    ptr.runpytest("--run-id", "busy", "--resume").assert_outcomes(passed=1)


def test_a_lease_held_on_another_host_is_respected(ptr: pytest.Pytester, store: StateStore) -> None:
    keys = store.keys("remote")
    lease = store.gateway.lease_grant(30)
    owner = {"host": "ci-runner-7", "pid": os.getpid(), "lease": lease, "started": 1.0}
    store.gateway.txn([put_op(keys.root + "/lease", json.dumps(owner), lease)])
    ptr.makepyfile("def test_x(): pass\n")
    refused = ptr.runpytest("--run-id", "remote", "--resume")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*still running on ci-runner-7 (pid *)*taskctl cancel remote*"])
    store.gateway.lease_revoke(lease)  # what etcd does when that host dies: the TTL expires
    ptr.runpytest("--run-id", "remote", "--resume").assert_outcomes(passed=1)


def test_resume_with_xdist_workers(
    ptr: pytest.Pytester, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ptr.makepyfile(
        "import os, pytest\n"
        "@pytest.mark.parametrize('n', range(6))\n"
        "def test_a(n): assert n % 3 or os.environ.get('FIXED')\n"
    )
    ptr.runpytest_subprocess("-n", "2", "--run-id", "xd").assert_outcomes(passed=4, failed=2)
    monkeypatch.setenv("FIXED", "1")
    second = ptr.runpytest_subprocess("-n", "2", "--run-id", "xd", "--resume")
    second.assert_outcomes(passed=2)  # the workers deselected the four that passed
    assert meta_of(store, "xd")["left"] == 0
    third = ptr.runpytest_subprocess("-n", "2", "--run-id", "xd", "--resume")
    assert third.ret == 0
    third.stdout.fnmatch_lines(["taskctl: resume: every test of run xd has passed; nothing left*"])


def test_attempt_counts_are_exact_with_threads(ptr: pytest.Pytester, store: StateStore) -> None:
    """Tests finishing at once on several threads never lose an update of the attempt entry."""
    ptr.makepyfile(
        "import pytest\n@pytest.mark.parametrize('n', range(80))\ndef test_a(n): assert n % 10\n"
    )
    args = ("--run-id", "threaded", "--thread", "4", "--group-unit", "function")
    ptr.runpytest(*args).assert_outcomes(passed=72, failed=8)
    meta = meta_of(store, "threaded")
    assert meta["attempts"][-1]["counts"] == {"passed": 72, "failed": 8, "skipped": 0}
    assert meta["left"] == 8
    second = ptr.runpytest(*args, "--resume")
    second.assert_outcomes(failed=8, deselected=72)
    attempts = meta_of(store, "threaded")["attempts"]
    assert [a["counts"] for a in attempts] == [
        {"passed": 72, "failed": 8, "skipped": 0},
        {"passed": 0, "failed": 8, "skipped": 0},
    ]


def test_resume_decides_from_the_latest_result_wherever_recorded(
    tmp_path: Path, etcd_factory: Callable[[], EmbeddedEtcd], prefix: str
) -> None:
    """etcd has test_x passed (attempt 1), the local record has it failed later (etcd down)."""
    server = etcd_factory()
    (tmp_path / "pytest.ini").write_text(INNER_INI)
    (tmp_path / "test_stale.py").write_text(
        "import os\ndef test_x(): assert not os.environ.get('BREAK')\ndef test_y(): pass\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    env.update(PYTEST_TASKCTL_ETCD=server.endpoint, PYTEST_TASKCTL_PREFIX=prefix)

    def attempt(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v",
             "--run-id", "stale", *args],
            cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    first = attempt()
    assert first.returncode == 0, first.stdout
    server.stop()
    second = attempt(BREAK="1")
    assert second.returncode == 1, second.stdout
    assert "etcd unreachable" in second.stdout
    server.start()
    third = attempt("--resume")
    assert "test_stale.py::test_x PASSED" in third.stdout, third.stdout  # it ran again
    assert "test_stale.py::test_y" not in third.stdout  # passed in both records
    assert "merged with the local record" in third.stdout
    assert third.returncode == 0
    with StateStore(server.endpoint, prefix) as store:
        meta = meta_of(store, "stale")
    assert meta["attempt"] == 2
