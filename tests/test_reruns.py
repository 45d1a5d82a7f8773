"""A suite that reruns failed tests (pytest-rerunfailures) keeps its outcomes.

The rerun plugin runs a failed test again inside the same protocol: each
attempt has its own setup, call and teardown reports. The test counts once,
with its last attempt's outcome, as pytest's own summary counts it; its trace
shows every attempt's phases under the one test span.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from pytest_taskctl.etcd.store import StateStore
from pytest_taskctl.outcome import Outcomes

from .conftest import results_of
from .test_telemetry import attributes, read_spans
from .test_trace_detail import events, is_error

needs_rerunfailures = pytest.mark.skipif(
    not importlib.util.find_spec("pytest_rerunfailures"), reason="pytest-rerunfailures missing"
)

SUITE = """
import pytest
from pathlib import Path

@pytest.fixture
def first_attempt(request):
    ran = Path(__file__).with_name(request.node.name + ".ran")
    first = not ran.exists()
    ran.touch()
    return first

def test_flaky(first_attempt):
    assert not first_attempt, "fails the first time"

def test_broken():
    assert False, "fails every time"

def test_fine():
    pass
"""


def run_suite(ptr: pytest.Pytester, run_id: str, *args: str) -> pytest.RunResult:
    ptr.makepyfile(test_flaky=SUITE)
    result = ptr.runpytest_subprocess("--reruns", "1", "--run-id", run_id, *args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["failed"], outcomes["rerun"]) == (2, 1, 2), outcomes
    return result


def assert_counted_once(ptr: pytest.Pytester, store: StateStore, run_id: str) -> None:
    """Each test counts once, with its last attempt's outcome: in etcd and in pytest.log."""
    meta = store.get_meta(run_id)
    assert meta is not None
    assert {k: meta["counts"][k] for k in ("passed", "failed", "skipped")} == {
        "passed": 2,
        "failed": 1,
        "skipped": 0,
    }, meta["counts"]
    outcomes = {nodeid: r["outcome"] for nodeid, r in results_of(store, run_id).items()}
    assert outcomes == {
        "test_flaky.py::test_flaky": "passed",
        "test_flaky.py::test_broken": "failed",
        "test_flaky.py::test_fine": "passed",
    }
    assert store.get_status(run_id) == "FAILED"
    log = (ptr.path / "logs" / run_id / "pytest.log").read_text()
    assert f"run {run_id} FAILED (exit 1): 2 passed, 1 failed, 0 skipped" in log


@needs_rerunfailures
def test_a_rerun_test_counts_once_with_its_last_outcome(
    ptr: pytest.Pytester, store: StateStore
) -> None:
    result = run_suite(ptr, "rr-1")
    assert_counted_once(ptr, store, "rr-1")
    traces = result.stdout.lines[result.stdout.lines.index(
        next(line for line in result.stdout.lines if "taskctl: traces of failed tests" in line)
    ):]  # fmt: skip
    assert any("FAILED test_flaky.py::test_broken" in line for line in traces)
    assert not any("test_flaky.py::test_flaky" in line for line in traces), "it passed in the end"
    log = (ptr.path / "logs" / "rr-1" / "pytest.log").read_text()
    assert "pytest_runtest_teardown: test_flaky.py::test_flaky passed in" in log
    assert "test_flaky.py::test_flaky passed in" in log and "s (2 attempts)" in log
    assert log.count("pytest_runtest_setup: test_flaky.py::test_flaky\n") == 2
    assert log.count("pytest_runtest_teardown: test_flaky.py::test_fine passed in") == 1


@needs_rerunfailures
def test_each_attempt_has_its_phases_under_the_one_test_span(
    ptr: pytest.Pytester, store: StateStore
) -> None:
    run_suite(ptr, "rr-2")
    spans = read_spans(ptr.path / "logs" / "rr-2" / "traces.jsonl")
    by_id = {span["spanId"]: span for span in spans}

    def test_span(name: str) -> dict[str, Any]:
        (span,) = [s for s in spans if s["name"] == f"test_flaky.py::{name}"]
        return span

    def children(parent: dict[str, Any]) -> list[dict[str, Any]]:
        found = [s for s in spans if s.get("parentSpanId") == parent["spanId"]]
        return sorted(found, key=lambda s: int(s["startTimeUnixNano"]))

    flaky = test_span("test_flaky")
    assert not is_error(flaky), "the last attempt passed"
    assert attributes(flaky)["pytest.outcome"] == "passed"
    assert attributes(flaky)["test.case.result.status"] == "pass"
    assert int(attributes(flaky)["pytest.reruns"]) == 1
    phases = children(flaky)
    assert [p["name"] for p in phases] == ["setup", "call", "teardown"] * 2
    first_call, second_call = phases[1], phases[4]
    assert is_error(first_call) and not is_error(second_call)
    assert [e["exception.type"] for e in events(first_call, "exception")] == ["AssertionError"]
    assert events(second_call, "exception") == []
    # Each attempt set its function-scoped fixture up under its own setup (the first
    # also set up the session's fixtures: pytest-asyncio's).
    assert "fixture first_attempt" in [c["name"] for c in children(phases[0])]
    assert [c["name"] for c in children(phases[3])] == ["fixture first_attempt"]
    assert all(int(p["endTimeUnixNano"]) <= int(flaky["endTimeUnixNano"]) for p in phases)
    ends = [(int(p["startTimeUnixNano"]), int(p["endTimeUnixNano"])) for p in phases]
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False)), (
        "attempts follow each other"
    )

    broken = test_span("test_broken")
    assert is_error(broken) and attributes(broken)["pytest.outcome"] == "failed"
    assert int(attributes(broken)["pytest.reruns"]) == 1
    calls = [p for p in children(broken) if p["name"] == "call"]
    assert len(calls) == 2 and all(is_error(c) for c in calls)

    fine = test_span("test_fine")
    assert "pytest.reruns" not in attributes(fine)
    assert [p["name"] for p in children(fine)] == ["setup", "call", "teardown"]
    assert all(s["parentSpanId"] in by_id for s in spans if "parentSpanId" in s), "no orphans"


@needs_rerunfailures
def test_the_xdist_controller_counts_a_rerun_test_once(
    ptr: pytest.Pytester, store: StateStore
) -> None:
    run_suite(ptr, "rr-3", "-n", "2")
    assert_counted_once(ptr, store, "rr-3")


@needs_rerunfailures
def test_a_rerun_stopped_in_its_setup_is_interrupted(
    ptr: pytest.Pytester, store: StateStore
) -> None:
    """Stopped while the rerun is set up: the test is interrupted (no result, so a
    resumed run runs it); the first attempt's failure stays in its phases."""
    ptr.makepyfile(
        test_stop="""
import pytest
from pathlib import Path

@pytest.fixture
def second_attempt_stops(request):
    ran = Path(__file__).with_name("ran")
    if ran.exists():
        pytest.exit("stopped during the rerun's setup")
    ran.touch()

def test_stopped(second_attempt_stops):
    assert False, "the first attempt fails"
"""
    )
    result = ptr.runpytest_subprocess("--reruns", "1", "--run-id", "rr-4")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert results_of(store, "rr-4") == {}, "an interrupted test has no result: resume runs it"
    (span,) = [
        s
        for s in read_spans(ptr.path / "logs" / "rr-4" / "traces.jsonl")
        if s["name"] == "test_stop.py::test_stopped"
    ]
    assert is_error(span) and attributes(span)["pytest.outcome"] == "error"
    assert span["status"]["message"] == "call: interrupted"
    calls = [s for s in read_spans(ptr.path / "logs" / "rr-4" / "traces.jsonl")
             if s.get("parentSpanId") == span["spanId"] and s["name"] == "call"]  # fmt: skip
    assert len(calls) == 1 and is_error(calls[0])
    assert store.get_status("rr-4") == "INTERRUPTED"


CRASH_ONCE = """
import os
from pathlib import Path

def test_crash():
    ran = Path(__file__).with_name("ran")
    if not ran.exists():
        ran.touch()
        os._exit(3)  # the xdist worker dies in the test

def test_ok():
    pass
"""


@needs_rerunfailures
def test_a_test_whose_worker_crashed_counts_once_with_its_rerun(
    ptr: pytest.Pytester, store: StateStore
) -> None:
    ptr.makepyfile(test_crash=CRASH_ONCE)
    result = ptr.runpytest_subprocess("-n", "2", "--reruns", "1", "--run-id", "rr-5")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    outcomes = {nodeid: r["outcome"] for nodeid, r in results_of(store, "rr-5").items()}
    assert outcomes == {"test_crash.py::test_crash": "passed", "test_crash.py::test_ok": "passed"}
    meta = store.get_meta("rr-5")
    assert meta is not None and (meta["counts"]["passed"], meta["counts"]["failed"]) == (2, 0)


@needs_rerunfailures
def test_rerun_markers_in_a_suite_run_without_taskctl_keep_their_outcomes(
    pytester: pytest.Pytester,
) -> None:
    """The same suite with the plugin disabled: the figures the tests above compare with."""
    pytester.makepyfile(test_flaky=SUITE)
    result = pytester.runpytest_subprocess("--reruns", "1", "-p", "no:taskctl")
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["failed"], outcomes["rerun"]) == (2, 1, 2)
    assert not Path(pytester.path / "logs").exists()


# -- the reports a controller logs ---------------------------------------------------------


def report(when: str, outcome: str = "passed") -> pytest.TestReport:
    return pytest.TestReport("t.py::test", ("t.py", 1, "test"), {}, outcome, None, when)  # type: ignore[arg-type]


def fold(*reports: pytest.TestReport) -> list[str | None]:
    """What :class:`Outcomes` says after each report, as the xdist controller sees them:
    a finished test's word, "(rerun)" for an attempt another follows, else None."""
    outcomes = Outcomes()
    said: list[str | None] = []
    for one in reports:
        done = outcomes.record(one, "t.py::test")
        said.append(None if done is None else "(rerun)" if done.rerun else done.word)
    return said


def test_an_attempt_a_rerun_plugin_logs_without_its_teardown_still_ends() -> None:
    """pytest-rerunfailures before 16.6.1 logs no teardown after a ``rerun`` report:
    the next setup begins the next attempt, which decides."""
    assert fold(
        report("setup"), report("call", "rerun"),
        report("setup"), report("call"), report("teardown"),
    ) == [None, None, None, None, "passed"]  # fmt: skip


def test_a_worker_crash_ends_an_attempt() -> None:
    """pytest-xdist reports a worker that died in a test with ``when="???"``: with a
    rerun plugin, the rescheduled attempt decides; without, the crash is the outcome."""
    assert fold(
        report("setup"), report("???", "rerun"),
        report("setup"), report("call"), report("teardown"),
    ) == [None, "(rerun)", None, None, "passed"]  # fmt: skip
    assert fold(report("setup"), report("???", "failed")) == [None, "error"]
