"""Spans, trace ids and log lines as a user finds them: traces.jsonl, pytest.log, a collector."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) - (\S+) - (\w+) - \[([0-9a-f]{32})\] - (.*)$"
)

SUITE = """
import logging, threading
import pytest
from pytest_taskctl import get_traceid, trace_headers

log = logging.getLogger("app.tests")

def test_pass(traceid):
    log.info("in test_pass %s", traceid)
    assert traceid == get_traceid()

def test_fail():
    log.warning("in test_fail %s", get_traceid())
    assert 1 == 2

@pytest.mark.skip(reason="not today")
def test_skip():
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_param(n, trace_headers):
    assert trace_headers["X-Trace-Id"] == get_traceid()
    assert trace_headers["traceparent"].split("-")[1] == get_traceid()
"""


def read_spans(path: Path) -> list[dict[str, Any]]:
    spans = []
    for line in path.read_text().splitlines():
        request = json.loads(line)
        for resource_spans in request["resourceSpans"]:
            for scope_spans in resource_spans["scopeSpans"]:
                for span in scope_spans["spans"]:
                    span["resource"] = {
                        a["key"]: next(iter(a["value"].values()))
                        for a in resource_spans["resource"]["attributes"]
                    }
                    spans.append(span)
    return spans


def roots(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The session's and the tests' own spans, without phase and fixture spans."""
    return [span for span in spans if not span.get("parentSpanId")]


def attributes(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}


def _line_of(path: Path, text: str) -> int:
    return next(
        n for n, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(text)
    )


def read_log(path: Path) -> list[tuple[str, str, str, str]]:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = LOG_LINE.match(line)
        assert match, f"line not in the contract's format: {line!r}"
        lines.append(match.group(2, 3, 4, 5))
    return lines


@pytest.fixture
def run_suite(ptr: pytest.Pytester):  # type: ignore[no-untyped-def]
    def run(*args: str, source: str = SUITE, run_id: str = "tel-1") -> pytest.RunResult:
        ptr.makepyfile(test_suite=source)
        return ptr.runpytest("--run-id", run_id, *args)

    return run


def test_every_test_has_its_own_trace_linked_to_the_session(
    ptr: pytest.Pytester, run_suite
) -> None:  # type: ignore[no-untyped-def]
    result = run_suite()
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    spans = roots(read_spans(ptr.path / "logs" / "tel-1" / "traces.jsonl"))
    by_name = {span["name"]: span for span in spans}
    session = by_name.pop("pytest session")
    assert len(by_name) == 5
    trace_ids = {span["traceId"] for span in by_name.values()}
    assert len(trace_ids) == 5 and session["traceId"] not in trace_ids
    for span in by_name.values():
        assert span["links"] == [
            {"traceId": session["traceId"], "spanId": session["spanId"], "flags": 256}
        ]
        assert "parentSpanId" not in span or not span["parentSpanId"]
        assert span["resource"]["service.name"] == "pytest"
    passed = attributes(by_name["test_suite.py::test_pass"])
    assert passed == {
        "test.case.name": "test_suite.py::test_pass",
        "test.case.result.status": "pass",
        "pytest.outcome": "passed",
        "pytest.run_id": "tel-1",
        "code.file.path": str(ptr.path / "test_suite.py"),
        "code.line.number": str(_line_of(ptr.path / "test_suite.py", "def test_pass")),
        "code.function.name": "test_suite.test_pass",
    }
    failed = by_name["test_suite.py::test_fail"]
    assert attributes(failed)["test.case.result.status"] == "fail"
    assert failed["status"]["code"] == 2 and "assert 1 == 2" in failed["status"]["message"]
    assert not failed.get("events"), "the exception event is on the call span"
    skipped = attributes(by_name["test_suite.py::test_skip"])
    assert skipped["test.case.result.status"] == "skip"
    assert skipped["pytest.skip_reason"] == "not today"
    assert attributes(by_name["test_suite.py::test_param[2]"])["test.case.result.status"] == "pass"
    session_attributes = attributes(session)
    assert session_attributes["pytest.run_id"] == "tel-1"
    assert session_attributes["test.suite.run.status"] == "failure"


def test_log_lines_carry_the_trace_id_of_their_test(ptr: pytest.Pytester, run_suite) -> None:  # type: ignore[no-untyped-def]
    run_suite("--taskctl-log-level", "INFO")
    logs = ptr.path / "logs" / "tel-1"
    spans = {span["name"]: span["traceId"] for span in read_spans(logs / "traces.jsonl")}
    lines = read_log(logs / "pytest.log")
    session_trace = spans["pytest session"]
    assert lines[0][0] == "pytest_taskctl.plugin" and lines[0][3].startswith(
        "pytest_sessionstart: run tel-1"
    )
    assert lines[0][2] == session_trace
    assert (
        lines[-1][3].startswith("pytest_sessionfinish: run tel-1 FAILED")
        and lines[-1][2] == session_trace
    )
    for name, _level, trace_id, message in lines[1:-1]:
        nodeid = (
            message.split(": ", 1)[1].split(" ")[0] if name == "pytest_taskctl.plugin" else None
        )
        if nodeid:
            assert spans[nodeid] == trace_id, message
    app_lines = [
        (level, trace_id, message)
        for name, level, trace_id, message in lines
        if name == "app.tests"
    ]
    assert app_lines == [
        (
            "INFO",
            spans["test_suite.py::test_pass"],
            f"in test_pass {spans['test_suite.py::test_pass']}",
        ),
        (
            "WARNING",
            spans["test_suite.py::test_fail"],
            f"in test_fail {spans['test_suite.py::test_fail']}",
        ),
    ]
    setup_lines = [m for n, _, _, m in lines if m.startswith("pytest_runtest_setup: ")]
    assert len(setup_lines) == 5, "exactly one setup line per test (no duplicates)"


def test_log_level_option_filters_lines(ptr: pytest.Pytester, run_suite) -> None:  # type: ignore[no-untyped-def]
    run_suite("--taskctl-log-level", "WARNING")
    lines = read_log(ptr.path / "logs" / "tel-1" / "pytest.log")
    assert {level for name, level, _, _ in lines if name == "app.tests"} == {"WARNING"}
    assert any(m.startswith("pytest_sessionstart") for *_, m in lines), "plugin lines always"
    assert any(message.startswith("in test_fail") for *_, message in lines)


def test_log_file_is_appended_across_runs(ptr: pytest.Pytester, run_suite) -> None:  # type: ignore[no-untyped-def]
    run_suite()
    run_suite()
    lines = read_log(ptr.path / "logs" / "tel-1" / "pytest.log")
    assert sum(1 for *_, m in lines if m.startswith("pytest_sessionstart")) == 2


def test_session_trace_mode_nests_tests_under_the_session(ptr: pytest.Pytester, run_suite) -> None:  # type: ignore[no-untyped-def]
    run_suite("--taskctl-trace-mode=session")
    spans = read_spans(ptr.path / "logs" / "tel-1" / "traces.jsonl")
    session = next(span for span in spans if span["name"] == "pytest session")
    tests = [span for span in spans if span["name"].startswith("test_suite.py::")]
    assert len(tests) == 5
    for span in tests:
        assert span["traceId"] == session["traceId"]
        assert span["parentSpanId"] == session["spanId"]


def test_traceparent_from_ci_is_the_session_parent(
    ptr: pytest.Pytester, run_suite, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TRACEPARENT", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    run_suite()
    spans = read_spans(ptr.path / "logs" / "tel-1" / "traces.jsonl")
    session = next(span for span in spans if span["name"] == "pytest session")
    assert session["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert session["parentSpanId"] == "b7ad6b7169203331"


def test_resource_from_standard_env(
    ptr: pytest.Pytester, run_suite, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout-api-tests")
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging,team=payments"
    )
    before = dict(os.environ)
    run_suite()
    after = dict(os.environ)
    for env in (before, after):
        env.pop("PYTEST_CURRENT_TEST", None)  # pytest's own, for the outer test
    assert after == before, "the plugin never writes os.environ"
    resource = read_spans(ptr.path / "logs" / "tel-1" / "traces.jsonl")[0]["resource"]
    assert resource["service.name"] == "checkout-api-tests"
    assert resource["deployment.environment.name"] == "staging" and resource["team"] == "payments"


SDK_DISABLED_SUITE = """
from pytest_taskctl import get_traceid, trace_headers
seen = []
def test_a():
    seen.append(get_traceid())
def test_b(traceid):
    seen.append(traceid)
    assert trace_headers()["traceparent"].endswith("-00")
def test_check():
    assert len(seen) == 2 and len(set(seen)) == 2
    for t in seen:
        assert len(t) == 32 and int(t, 16) != 0 and t == t.lower()
"""


def test_trace_ids_exist_with_sdk_disabled(
    ptr: pytest.Pytester, run_suite, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    result = run_suite(source=SDK_DISABLED_SUITE)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*traces off (disabled (OTEL_SDK_DISABLED))*"])
    assert not (ptr.path / "logs" / "tel-1" / "traces.jsonl").exists()
    lines = read_log(ptr.path / "logs" / "tel-1" / "pytest.log")
    test_traces = {m.split()[1]: t for _, _, t, m in lines if m.startswith("pytest_runtest_setup")}
    assert len(set(test_traces.values())) == 3
    assert "0" * 32 not in test_traces.values()


THREAD_AND_GLOBAL_SUITE = """
import threading
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pytest_taskctl import get_traceid

user_exporter = InMemorySpanExporter()
user_provider = TracerProvider()
user_provider.add_span_processor(SimpleSpanProcessor(user_exporter))
trace.set_tracer_provider(user_provider)

def test_thread_spawned_by_test_sees_the_test_trace_id():
    seen = []
    worker = threading.Thread(target=lambda: seen.append(get_traceid()))
    worker.start(); worker.join()
    assert seen == [get_traceid()]

def test_user_spans_are_children_of_the_test_span():
    with trace.get_tracer("user").start_as_current_span("call api") as span:
        assert format(span.get_span_context().trace_id, "032x") == get_traceid()

def test_global_provider_untouched():
    assert trace.get_tracer_provider() is user_provider
    assert [s.name for s in user_exporter.get_finished_spans()] == ["call api"]
"""


def test_threads_and_user_global_provider(ptr: pytest.Pytester) -> None:
    # In a process of its own: OpenTelemetry lets a process set its global provider
    # once, and an in-process run of another suite (test_trace_http's) may have.
    ptr.makepyfile(test_suite=THREAD_AND_GLOBAL_SUITE)
    ptr.runpytest_subprocess("--run-id", "tel-1").assert_outcomes(passed=3)


ASYNC_SUITE = """
import asyncio
import pytest
from opentelemetry import trace
from pytest_taskctl import get_traceid

@pytest.mark.asyncio
async def test_async_sees_its_trace_id(traceid):
    await asyncio.sleep(0)
    current = format(trace.get_current_span().get_span_context().trace_id, "032x")
    assert get_traceid() == traceid == current
    inner = await asyncio.create_task(asyncio.sleep(0, result=get_traceid()))
    assert inner == traceid
"""


def test_async_tests_with_pytest_asyncio(run_suite) -> None:  # type: ignore[no-untyped-def]
    run_suite(source=ASYNC_SUITE).assert_outcomes(passed=1)
