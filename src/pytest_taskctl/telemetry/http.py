"""``--taskctl-http``: HTTP calls of the tests as client spans inside each test's trace.

The maintained OpenTelemetry instrumentations of requests, httpx (sync and
async) and urllib3 do the patching and inject ``traceparent``; we hand them
the run's own tracer provider (the global one belongs to the suite) and a
request hook that adds ``X-Trace-Id``, for services that log a trace id but
do not speak W3C trace context. Off unless asked: nothing is patched then.

A library the suite does not have installed, or one that the suite already
instrumented itself, is left alone; only what we instrumented is undone at
the end of the session.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace

log = logging.getLogger("pytest_taskctl.plugin")
TRACE_ID_HEADER = "X-Trace-Id"

#: (instrumentor module, class) of each library, in the order they are instrumented.
INSTRUMENTORS = (
    ("opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    ("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"),
    ("opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"),
)


def _trace_id(span: trace.Span) -> str | None:
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def requests_hook(span: trace.Span, request: Any) -> None:
    """requests: ``request`` is the ``PreparedRequest`` about to be sent."""
    trace_id = _trace_id(span)
    if trace_id is not None:
        request.headers[TRACE_ID_HEADER] = trace_id


def httpx_hook(span: trace.Span, request: Any) -> None:
    """httpx: ``request.headers`` is the request's ``httpx.Headers`` (mutable)."""
    trace_id = _trace_id(span)
    if trace_id is not None and request.headers is not None:
        request.headers[TRACE_ID_HEADER] = trace_id


async def httpx_async_hook(span: trace.Span, request: Any) -> None:
    httpx_hook(span, request)


def urllib3_hook(span: trace.Span, pool: Any, request: Any) -> None:
    """urllib3: ``request.headers`` is the copy that is injected into and sent."""
    trace_id = _trace_id(span)
    if trace_id is not None and request.headers is not None:
        request.headers[TRACE_ID_HEADER] = trace_id


HOOKS: dict[str, dict[str, Any]] = {
    "RequestsInstrumentor": {"request_hook": requests_hook},
    "HTTPXClientInstrumentor": {
        "request_hook": httpx_hook,
        "async_request_hook": httpx_async_hook,
    },
    "URLLib3Instrumentor": {"request_hook": urllib3_hook},
}


class HttpTracing:
    """Instruments the HTTP clients for one session and undoes it afterwards."""

    def __init__(self, tracer_provider: Any, own_hosts: tuple[str, ...] = ()) -> None:
        self.tracer_provider = tracer_provider
        self.own_hosts = own_hosts
        self._instrumented: list[Any] = []

    def _excluded_urls(self, library: str) -> str | None:
        """The suite's ``OTEL_PYTHON_*_EXCLUDED_URLS`` plus our own hosts (None: none)."""
        ours = [re.escape(f"//{host}/") for host in self.own_hosts]
        theirs = os.environ.get(
            f"OTEL_PYTHON_{library}_EXCLUDED_URLS", os.environ.get("OTEL_PYTHON_EXCLUDED_URLS", "")
        )
        return ",".join([*ours, theirs] if theirs.strip() else ours) or None

    @property
    def libraries(self) -> list[str]:
        """Names of the instrumentors we applied (for the report header and tests)."""
        return [type(instrumentor).__name__ for instrumentor in self._instrumented]

    def _exclusions(self, class_name: str) -> dict[str, str]:
        # httpx reads its exclusions from the environment only. The plugin's own
        # etcd traffic goes through http.client, which none of these patch; the
        # run's etcd hosts are excluded all the same: calls to them are the
        # plugin's business (a suite driving taskctl), not the API under test.
        library = {"RequestsInstrumentor": "REQUESTS", "URLLib3Instrumentor": "URLLIB3"}
        if class_name not in library:
            return {}
        excluded = self._excluded_urls(library[class_name])
        return {} if excluded is None else {"excluded_urls": excluded}

    def start(self) -> HttpTracing:
        for module_name, class_name in INSTRUMENTORS:
            try:
                instrumentor = getattr(importlib.import_module(module_name), class_name)()
            except ImportError:
                continue  # the library (or its instrumentation) is not installed
            if instrumentor.is_instrumented_by_opentelemetry:
                continue  # the suite's own instrumentation: not ours to replace or undo
            try:
                # A library version the instrumentation does not support is skipped
                # by instrument() itself (its dependency check). The SDK's
                # get_tracer adds a process-wide warnings filter: keep the suite's.
                with warnings.catch_warnings():
                    instrumentor.instrument(
                        tracer_provider=self.tracer_provider,
                        **HOOKS[class_name],
                        **self._exclusions(class_name),
                    )
            except Exception as exc:
                log.warning("--taskctl-http: could not instrument %s: %s", class_name, exc)
                continue
            if instrumentor.is_instrumented_by_opentelemetry:
                self._instrumented.append(instrumentor)
        return self

    def stop(self) -> None:
        while self._instrumented:
            instrumentor = self._instrumented.pop()
            try:
                instrumentor.uninstrument()
            except Exception as exc:
                log.warning("--taskctl-http: could not undo %s: %s", type(instrumentor), exc)


class HttpPlugin:
    """Instruments at session start (once the run's provider exists), undoes at its end."""

    def __init__(self, provider_of: Callable[[], Any], own_hosts: tuple[str, ...] = ()) -> None:
        self._provider_of = provider_of
        self.own_hosts = own_hosts
        self.tracing: HttpTracing | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        provider = self._provider_of()
        if provider is not None:  # None: OTEL_SDK_DISABLED, no spans to make
            self.tracing = HttpTracing(provider, self.own_hosts).start()
        session.config.add_cleanup(self.stop)  # also when sessionfinish never comes

    def pytest_report_header(self) -> list[str]:
        if self.tracing is None:
            return []
        return [f"taskctl: HTTP client spans from {', '.join(self.tracing.libraries) or 'none'}"]

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self.tracing is not None:
            self.tracing.stop()
            self.tracing = None
