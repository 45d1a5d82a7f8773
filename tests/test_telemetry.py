"""Spans, trace ids and log lines as a user finds them: traces.jsonl, pytest.log, a collector."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .conftest import INNER_INI, OTLPReceiver, wait_for

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


def test_threads_and_user_global_provider(run_suite) -> None:  # type: ignore[no-untyped-def]
    run_suite(source=THREAD_AND_GLOBAL_SUITE).assert_outcomes(passed=3)


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


def test_otlp_grpc_export_matches_the_file(
    ptr: pytest.Pytester,
    run_suite,
    otlp_receiver: tuple[OTLPReceiver, str],
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    receiver, endpoint = otlp_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    result = run_suite()
    result.stdout.fnmatch_lines([f"*(OTLP grpc {endpoint})*"])
    file_spans = {
        (s["traceId"], s["spanId"], s["name"])
        for s in read_spans(ptr.path / "logs" / "tel-1" / "traces.jsonl")
    }
    received = {(s.trace_id.hex(), s.span_id.hex(), s.name) for s in receiver.spans()}
    assert received == file_spans
    assert len({name for *_, name in received if name.startswith(("test_", "pytest"))}) == 6
    wait_for(
        lambda: any(r.body.string_value.startswith("in test_fail") for r in receiver.log_records())
    )
    records = {r.body.string_value: r.trace_id.hex() for r in receiver.log_records()}
    by_name = {name: trace_id for trace_id, _, name in file_spans}
    fail_line = next(body for body in records if body.startswith("in test_fail"))
    assert records[fail_line] == by_name["test_suite.py::test_fail"]
    with receiver.lock:
        resources = [rl.resource for req in receiver.log_requests for rl in req.resource_logs]
    names = {
        a.value.string_value for r in resources for a in r.attributes if a.key == "service.name"
    }
    assert names == {"pytest"}, "logs and spans name the same service"


class _OTLPHTTPHandler(BaseHTTPRequestHandler):
    requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            type(self).requests.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def otlp_http_endpoint() -> Iterator[type[_OTLPHTTPHandler]]:
    _OTLPHTTPHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OTLPHTTPHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _OTLPHTTPHandler.endpoint = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield _OTLPHTTPHandler
    server.shutdown()
    server.server_close()


def test_otlp_http_protobuf_export(
    ptr: pytest.Pytester, run_suite, otlp_http_endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http_endpoint.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    run_suite()
    names = {
        span.name
        for request in otlp_http_endpoint.requests
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }
    assert "pytest session" in names and "test_suite.py::test_fail" in names
    assert {"setup", "call", "teardown"} <= names


def test_bad_otlp_protocol_is_a_usage_error(
    ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest("--run-id", "x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unsupported OTEL_EXPORTER_OTLP_PROTOCOL 'carrier-pigeon'" in result.stderr.str()


@pytest.fixture
def silent_collector() -> Iterator[str]:
    """A TCP endpoint that accepts connections and never answers: the worst collector."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_collector_that_never_answers_costs_at_most_about_2_s(
    tmp_path: Path, taskctl_env: dict[str, str], silent_collector: str, protocol: str
) -> None:
    """The SDK's own flush would wait out its retries (10 s and more); we give it 2 s."""
    (tmp_path / "pytest.ini").write_text(INNER_INI)
    (tmp_path / "test_x.py").write_text("def test_a(): pass\ndef test_b(): pass\n")

    def run(extra: dict[str, str], run_id: str) -> float:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--run-id", run_id, "-q", "-p", "no:cacheprovider"],
            cwd=tmp_path, env={**taskctl_env, **extra}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return time.monotonic() - started

    baseline = run({}, "quiet-1")
    silent = run(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": silent_collector, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol},
        "silent-1",
    )
    # 2 s budget, plus slack for exporter imports and a loaded machine; a hang is 10 s+.
    assert silent - baseline < 5.0, f"{silent:.1f} s with a silent collector vs {baseline:.1f} s"
    spans = roots(read_spans(tmp_path / "logs" / "silent-1" / "traces.jsonl"))
    assert len(spans) == 3, "the file gets every span whatever the collector does"


def test_unreachable_collector_never_hangs_the_run(
    tmp_path: Path, taskctl_env: dict[str, str]
) -> None:
    """A collector that is down costs at most ~2 s; the file still gets every span."""
    (tmp_path / "pytest.ini").write_text(INNER_INI)
    (tmp_path / "test_x.py").write_text("def test_a(): pass\ndef test_b(): pass\n")
    env = {**taskctl_env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--run-id", "down-1", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 20, f"run took {elapsed:.1f} s with the collector down"
    spans = roots(read_spans(tmp_path / "logs" / "down-1" / "traces.jsonl"))
    assert len(spans) == 3
