"""What a test's trace shows: phase and fixture spans, log events, exception events."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .conftest import INNER_INI
from .test_telemetry import attributes, read_spans

SUITE = """
import logging
import pytest

log = logging.getLogger("app.tests")

@pytest.fixture(scope="module")
def database():
    log.warning("connecting the database")
    return {"rows": 1}

@pytest.fixture
def broken_server():
    raise RuntimeError("no server on port 1")

def test_first(database):
    log.warning("first sees %d row", database["rows"])

def test_second(database):
    log.info("below the level: not an event")
    log.error("second is about to fail")
    assert database["rows"] == 2

def test_fixture_error(broken_server):
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False

def test_skip_inside():
    pytest.skip("not here")
"""


def run(ptr: pytest.Pytester, *args: str, source: str = SUITE) -> list[dict[str, Any]]:
    ptr.makepyfile(test_detail=source)
    result = ptr.runpytest("--run-id", "detail-1", *args)
    result.assert_outcomes(passed=1, failed=1, errors=1, xfailed=1, skipped=1)
    return read_spans(ptr.path / "logs" / "detail-1" / "traces.jsonl")


class Trace:
    """The spans of one run, navigable by test and by parent."""

    def __init__(self, spans: list[dict[str, Any]]) -> None:
        self.spans = spans
        self.by_id = {span["spanId"]: span for span in spans}

    def test(self, name: str) -> dict[str, Any]:
        return next(s for s in self.spans if s["name"] == f"test_detail.py::{name}")

    def children(self, parent: dict[str, Any]) -> list[dict[str, Any]]:
        found = [s for s in self.spans if s.get("parentSpanId") == parent["spanId"]]
        return sorted(found, key=lambda s: int(s["startTimeUnixNano"]))

    def child(self, parent: dict[str, Any], name: str) -> dict[str, Any]:
        return next(s for s in self.children(parent) if s["name"] == name)


def events(span: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [attributes(e) for e in span.get("events", []) if e["name"] == name]


def is_error(span: dict[str, Any]) -> bool:
    return span.get("status", {}).get("code") == 2


def test_default_detail_shows_phases_fixtures_logs_and_exceptions(ptr: pytest.Pytester) -> None:
    trace = Trace(run(ptr))

    first = trace.test("test_first")
    assert [s["name"] for s in trace.children(first)] == ["setup", "call", "teardown"]
    for phase in trace.children(first):
        assert phase["traceId"] == first["traceId"] and not is_error(phase)
    setup = trace.child(first, "setup")
    fixture = trace.child(setup, "fixture database")
    assert attributes(fixture) == {
        "pytest.fixture.name": "database",
        "pytest.fixture.scope": "module",
    }
    assert [e["log.message"] for e in events(fixture, "log")] == ["connecting the database"]
    call_log = events(trace.child(first, "call"), "log")
    assert len(call_log) == 1
    assert call_log[0]["log.message"] == "first sees 1 row"
    assert call_log[0]["log.severity"] == "WARNING"
    assert call_log[0]["code.function.name"] == "test_first"
    assert call_log[0]["code.file.path"] == str(ptr.path / "test_detail.py")

    second = trace.test("test_second")
    assert trace.children(trace.child(second, "setup")) == [], "module fixture: set up once"
    call = trace.child(second, "call")
    assert [e["log.message"] for e in events(call, "log")] == ["second is about to fail"]
    (exception,) = events(call, "exception")
    assert exception["exception.type"] == "AssertionError"
    assert "assert 1 == 2" in exception["exception.message"]
    stack = exception["exception.stacktrace"]
    assert stack.startswith("Traceback (most recent call last):\n")
    assert 'test_detail.py", line 21, in test_second' in stack
    assert "pluggy" not in stack and "_pytest" not in stack
    assert is_error(call) and is_error(second)
    assert not is_error(trace.child(second, "setup")) and not events(second, "exception")

    errored = trace.test("test_fixture_error")
    setup = trace.child(errored, "setup")
    broken = trace.child(setup, "fixture broken_server")
    for span in (broken, setup):
        (exception,) = events(span, "exception")
        assert exception["exception.type"] == "RuntimeError"
        assert exception["exception.message"] == "no server on port 1"
        assert "in broken_server" in exception["exception.stacktrace"]
        assert is_error(span)
    assert is_error(errored)
    assert [s["name"] for s in trace.children(errored)] == ["setup", "teardown"]

    for name in ("test_xfail", "test_skip_inside"):
        test = trace.test(name)
        assert not any(is_error(s) or events(s, "exception") for s in [test, *trace.children(test)])


def test_phase_spans_lie_within_their_test_and_one_ended_by_pytest_exit_is_kept(
    ptr: pytest.Pytester,
) -> None:
    ptr.makepyfile(
        test_exit="""
        import pytest

        def test_done():
            pass

        def test_stops_the_run():
            pytest.exit("operator said stop")
        """
    )
    result = ptr.runpytest("--run-id", "exit-1")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    trace = Trace(read_spans(ptr.path / "logs" / "exit-1" / "traces.jsonl"))
    done = next(s for s in trace.spans if s["name"] == "test_exit.py::test_done")
    phases = trace.children(done)
    assert [s["name"] for s in phases] == ["setup", "call", "teardown"]
    ends = [int(done["startTimeUnixNano"])]
    for phase in phases:  # one after the other, each within the test
        assert ends[-1] <= int(phase["startTimeUnixNano"]) <= int(phase["endTimeUnixNano"])
        ends.append(int(phase["endTimeUnixNano"]))
    assert ends[-1] <= int(done["endTimeUnixNano"])
    stopped = next(s for s in trace.spans if s["name"] == "test_exit.py::test_stops_the_run")
    assert [s["name"] for s in trace.children(stopped)] == ["setup", "call"]
    for phase in trace.children(stopped):  # the interrupted call ends with its test, not after
        assert int(phase["endTimeUnixNano"]) <= int(stopped["endTimeUnixNano"])
    assert attributes(stopped)["pytest.outcome"] == "error", "its setup passed, but not the test"
    assert is_error(stopped) and stopped["status"]["message"] == "call: interrupted"


def test_a_phase_that_does_not_run_has_no_span(ptr: pytest.Pytester) -> None:
    """``--setup-only`` runs no call: setup and teardown spans only, named by their reports."""
    ptr.makepyfile(test_only="def test_a():\n    pass\n")
    result = ptr.runpytest("--run-id", "only-1", "--setup-only")
    assert result.ret == pytest.ExitCode.OK
    trace = Trace(read_spans(ptr.path / "logs" / "only-1" / "traces.jsonl"))
    test = next(s for s in trace.spans if s["name"] == "test_only.py::test_a")
    assert [s["name"] for s in trace.children(test)] == ["setup", "teardown"]


def test_phases_detail_has_no_fixture_spans(ptr: pytest.Pytester) -> None:
    trace = Trace(run(ptr, "--taskctl-span-detail", "phases"))
    names = Counter(span["name"] for span in trace.spans)
    assert names["setup"] == names["call"] + 1 == names["teardown"] == 5
    assert not [name for name in names if name.startswith("fixture ")]
    assert events(trace.child(trace.test("test_second"), "call"), "exception")


def test_test_detail_keeps_one_span_with_the_exception_on_it(ptr: pytest.Pytester) -> None:
    ptr.makeini(INNER_INI + "taskctl_span_detail = test\n")
    trace = Trace(run(ptr))
    assert all(not span.get("parentSpanId") for span in trace.spans)
    assert len(trace.spans) == 6  # 5 tests and the session
    second = trace.test("test_second")
    (exception,) = events(second, "exception")
    assert exception["exception.type"] == "AssertionError"
    assert "in test_second" in exception["exception.stacktrace"]
    assert [e["log.message"] for e in events(second, "log")] == ["second is about to fail"]
    (fixture_error,) = events(trace.test("test_fixture_error"), "exception")
    assert fixture_error["exception.message"] == "no server on port 1"


def test_log_level_option_decides_which_records_become_events(ptr: pytest.Pytester) -> None:
    trace = Trace(run(ptr, "--taskctl-log-level", "INFO"))
    call = trace.child(trace.test("test_second"), "call")
    assert [(e["log.severity"], e["log.message"]) for e in events(call, "log")] == [
        ("INFO", "below the level: not an event"),
        ("ERROR", "second is about to fail"),
    ]


@pytest.mark.parametrize(
    ("args", "ini"),
    [(["--taskctl-span-detail", "everything"], ""), ([], "taskctl_span_detail = spans\n")],
)
def test_bad_span_detail_is_a_usage_error(ptr: pytest.Pytester, args: list[str], ini: str) -> None:
    ptr.makeini(INNER_INI + ini)
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest("--run-id", "x", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*invalid --taskctl-span-detail / taskctl_span_detail *: "
            "use 'test', 'phases' or 'fixtures'*"
        ]
    )


THREADED_SUITE = """
import logging, threading, time
import pytest

log = logging.getLogger("app")
started = threading.Barrier(2, timeout=10)

@pytest.fixture
def resource():
    return 1

@pytest.mark.group("a")
def test_a(resource):
    started.wait()  # both tests run at once, on two threads
    log.warning("in a")

@pytest.mark.group("b")
def test_b(resource):
    started.wait()
    log.warning("in b")
"""


def test_thread_mode_keeps_each_tests_spans_in_its_own_trace(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(test_detail=THREADED_SUITE)
    ptr.runpytest("--run-id", "detail-1", "--thread", "2").assert_outcomes(passed=2)
    trace = Trace(read_spans(Path(ptr.path) / "logs" / "detail-1" / "traces.jsonl"))
    for name in ("a", "b"):
        test = trace.test(f"test_{name}")
        phases = trace.children(test)
        assert [s["name"] for s in phases] == ["setup", "call", "teardown"]
        fixture = trace.child(phases[0], "fixture resource")
        assert fixture["traceId"] == test["traceId"]
        assert [e["log.message"] for e in events(phases[1], "log")] == [f"in {name}"]
