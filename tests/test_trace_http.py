"""``--taskctl-http``: the tests' HTTP calls as client spans, with trace headers sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from .conftest import INNER_INI
from .test_telemetry import read_spans

SPAN_KIND_CLIENT = 3

SUITE = """
import os
import httpx, pytest, requests, urllib3
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

URL = os.environ["HTTP_TEST_URL"]
user_exporter = InMemorySpanExporter()
user_provider = TracerProvider()
user_provider.add_span_processor(SimpleSpanProcessor(user_exporter))
trace.set_tracer_provider(user_provider)

def test_requests():
    assert requests.get(URL + "/requests", timeout=5).status_code == 200

def test_httpx_sync():
    with httpx.Client() as client:
        assert client.get(URL + "/httpx-sync").status_code == 200

@pytest.mark.asyncio
async def test_httpx_async():
    async with httpx.AsyncClient() as client:
        assert (await client.get(URL + "/httpx-async")).status_code == 200

def test_urllib3():
    assert urllib3.PoolManager().request("GET", URL + "/urllib3").status == 200

def test_global_provider_got_nothing():
    assert user_exporter.get_finished_spans() == ()
"""


class Recorder(BaseHTTPRequestHandler):
    """Answers 200 and keeps the headers of every request, by path."""

    received: dict[str, dict[str, str]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).received[self.path] = {k.lower(): v for k, v in self.headers.items()}
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, str]]]:
    """A real HTTP server on loopback; yields what it received, by path."""
    Recorder.received = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HTTP_TEST_URL", f"http://127.0.0.1:{server.server_address[1]}")
    yield Recorder.received
    server.shutdown()
    server.server_close()


def _patched() -> list[str]:
    """Which client libraries are instrumented in this process right now."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    return [
        type(i).__name__
        for i in (RequestsInstrumentor(), HTTPXClientInstrumentor(), URLLib3Instrumentor())
        if i.is_instrumented_by_opentelemetry
    ]


def _run(ptr: pytest.Pytester, *args: str, ini: str = "") -> list[dict[str, Any]]:
    ptr.makeini(INNER_INI + ini)
    ptr.makepyfile(test_http=SUITE)
    ptr.runpytest("--run-id", "http-1", *args).assert_outcomes(passed=5)
    return read_spans(ptr.path / "logs" / "http-1" / "traces.jsonl")


@pytest.mark.parametrize("how", ["option", "env", "ini"])
def test_http_calls_are_client_spans_of_the_call_phase_with_headers(
    ptr: pytest.Pytester,
    http_server: dict[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    args = ["--taskctl-http"] if how == "option" else []
    if how == "env":
        monkeypatch.setenv("PYTEST_TASKCTL_HTTP", "1")
    spans = _run(ptr, *args, ini="taskctl_http = true\n" if how == "ini" else "")
    assert _patched() == [], "uninstrumented at the end of the session"
    by_id = {span["spanId"]: span for span in spans}
    clients = [span for span in spans if span["kind"] == SPAN_KIND_CLIENT]
    assert len(clients) == 4, [s["name"] for s in clients]
    for library in ("requests", "httpx-sync", "httpx-async", "urllib3"):
        headers = http_server[f"/{library}"]
        _version, trace_id, parent_id, _flags = headers["traceparent"].split("-")
        client = by_id[parent_id]
        assert client["kind"] == SPAN_KIND_CLIENT and client["traceId"] == trace_id
        call = by_id[client["parentSpanId"]]
        assert call["name"] == "call"
        test = by_id[call["parentSpanId"]]
        test_name = library.replace("-", "_")
        assert test["name"] == f"test_http.py::test_{test_name}"
        assert test["traceId"] == trace_id
        assert headers["x-trace-id"] == trace_id


def test_http_off_by_default_patches_nothing(
    ptr: pytest.Pytester, http_server: dict[str, dict[str, str]]
) -> None:
    spans = _run(ptr)
    assert not [span for span in spans if span["kind"] == SPAN_KIND_CLIENT]
    assert len(http_server) == 4
    for headers in http_server.values():
        assert "traceparent" not in headers and "x-trace-id" not in headers


def test_bad_http_env_is_a_usage_error(
    ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_TASKCTL_HTTP", "maybe")
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest("--run-id", "x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid PYTEST_TASKCTL_HTTP='maybe': use 1/true/yes/on*"])


def test_instrumentation_the_suite_made_itself_is_left_alone(
    ptr: pytest.Pytester, http_server: dict[str, dict[str, str]]
) -> None:
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    RequestsInstrumentor().instrument()
    try:
        _run(ptr, "--taskctl-http")
        assert _patched() == ["RequestsInstrumentor"], "the suite's own instrumentation stays"
    finally:
        RequestsInstrumentor().uninstrument()
