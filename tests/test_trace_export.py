"""Where spans go: OTLP/gRPC, OTLP/HTTP, and a collector that is down or silent."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .conftest import INNER_INI, OTLPReceiver, wait_for
from .test_telemetry import SUITE, read_spans, roots


@pytest.fixture
def run_suite(ptr: pytest.Pytester):  # type: ignore[no-untyped-def]
    def run(*args: str) -> pytest.RunResult:
        ptr.makepyfile(test_suite=SUITE)
        return ptr.runpytest("--run-id", "tel-1", *args)

    return run


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


LOGGING_SUITE = """
import logging, sys
from opentelemetry import trace

log = logging.getLogger("app.orders")

def test_logs():
    log.warning("order %s refused", 42, extra={"app.user": "u1"})
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("boom")
    with open("trace_id.txt", "w") as f:
        f.write(format(trace.get_current_span().get_span_context().trace_id, "032x"))

def test_pytest_process_loads_no_grpc_and_no_logs_sdk():
    # Both live in the span process: gRPC is a heavy import, and the logs SDK's
    # loggers (one of them non-propagating) cost pytest's log capture every test.
    loaded = [m for m in sys.modules if m.startswith(("grpc", "opentelemetry.sdk._logs"))]
    assert loaded == []
"""


def test_otel_log_records_keep_level_extra_exception_and_trace(
    ptr: pytest.Pytester, otlp_receiver: tuple[OTLPReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, endpoint = otlp_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    ptr.makepyfile(test_logging=LOGGING_SUITE)
    ptr.runpytest_subprocess("--run-id", "logs-1").assert_outcomes(passed=2)
    records = {r.body.string_value: r for r in receiver.log_records()}
    refused, boom = records["order 42 refused"], records["boom"]
    trace_id = (ptr.path / "trace_id.txt").read_text()
    assert refused.trace_id.hex() == boom.trace_id.hex() == trace_id
    assert (refused.severity_text, refused.severity_number) == ("WARN", 13)
    assert (boom.severity_text, boom.severity_number) == ("ERROR", 17)
    refused_attributes = {a.key: a.value.string_value for a in refused.attributes}
    assert refused_attributes["app.user"] == "u1"
    boom_attributes = {a.key: a.value.string_value for a in boom.attributes}
    assert boom_attributes["exception.type"] == "ZeroDivisionError"
    assert boom_attributes["exception.message"] == "division by zero"
    assert "in test_logs" in boom_attributes["exception.stacktrace"]
    with receiver.lock:
        scopes = {sl.scope.name for req in receiver.log_requests for rl in req.resource_logs
                  for sl in rl.scope_logs}  # fmt: skip
    assert "app.orders" in scopes, "the logger's name is the scope, as the SDK's handler does"


def test_otlp_headers_reach_the_collector_with_spans_and_logs(
    ptr: pytest.Pytester, otlp_receiver: tuple[OTLPReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OTEL_EXPORTER_OTLP_HEADERS`` (a tenant, a token) on every export of the span process."""
    receiver, endpoint = otlp_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    headers = "x-scope-orgid=team-a,authorization=Bearer%20t1"  # the spec's URL-encoded values
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", headers)
    ptr.makepyfile(test_logging=LOGGING_SUITE)
    ptr.runpytest_subprocess("--run-id", "headers-1").assert_outcomes(passed=2)
    assert receiver.spans() and receiver.log_records()
    with receiver.lock:
        metadata = list(receiver.metadata)
    assert len(metadata) >= 2
    for call in metadata:
        assert call.get("x-scope-orgid") == "team-a"
        assert call.get("authorization") == "Bearer t1"


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
