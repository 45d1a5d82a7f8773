"""OpenTelemetry spans for the session and every test.

We build our own ``TracerProvider`` (the global one belongs to the user),
configured from the standard ``OTEL_*`` variables. Spans always go to
``logs/<run_id>/traces.jsonl`` (OTLP/JSON, replayable by the Collector's
``otlpjsonfile`` receiver) and, when an endpoint is configured, over OTLP.
Shutdown is bounded: the SDK's flush ignores its timeout (FIELD-NOTES), so
the OTLP side shuts down in a thread we stop waiting for after ~2 s.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..outcome import TestOutcome

TRUE_WORDS = ("1", "true", "yes", "on")
PLUGIN_THREAD_PREFIXES = ("taskctl-", "OtelBatch")


def sdk_disabled(environ: Mapping[str, str]) -> bool:
    """``OTEL_SDK_DISABLED`` as the SDK reads it (also used for the logs pipeline)."""
    return environ.get("OTEL_SDK_DISABLED", "").strip().lower() in TRUE_WORDS


OTLP_PROTOCOLS = ("grpc", "http/protobuf")
EXPORT_DEADLINE = 1.5  # leaves room for exporter start-up within the ~2 s promise

#: test.suite.run.status for each end status of a run.
SUITE_STATUS = {
    "COMPLETED": "success",
    "FAILED": "failure",
    "CANCELLED": "aborted",
    "INTERRUPTED": "aborted",
}


def _random_span_context(trace_id: int | None = None) -> SpanContext:
    """A valid, unsampled span context: ids exist even when the SDK is disabled."""
    rng = random.SystemRandom()
    return SpanContext(
        trace_id=trace_id or rng.getrandbits(128) or 1,
        span_id=rng.getrandbits(64) or 1,
        is_remote=False,
        trace_flags=trace.TraceFlags(0),
    )


def format_traceparent(span_context: SpanContext) -> str:
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )


class InvalidExportConfig(ValueError):
    """An ``OTEL_*`` value we cannot honour; reported as a usage error."""


@dataclass(frozen=True)
class ExportConfig:
    """What the ``OTEL_*`` variables ask for; read once, never written."""

    sdk_disabled: bool
    otlp: bool
    protocol: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ExportConfig:
        disabled = sdk_disabled(environ)
        exporters = {
            name.strip().lower()
            for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
            if name.strip()
        }
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        otlp = "none" not in exporters and ("otlp" in exporters or bool(endpoint))
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        ).strip()
        return cls(sdk_disabled=disabled, otlp=otlp, protocol=protocol)

    def validate(self) -> ExportConfig:
        if self.otlp and self.protocol not in OTLP_PROTOCOLS:
            raise InvalidExportConfig(
                f"unsupported OTEL_EXPORTER_OTLP_PROTOCOL {self.protocol!r}: "
                f"use {' or '.join(repr(p) for p in OTLP_PROTOCOLS)}"
            )
        return self

    def describe(self, environ: Mapping[str, str]) -> str:
        if self.sdk_disabled:
            return "disabled (OTEL_SDK_DISABLED)"
        if not self.otlp:
            return "file only"
        endpoint = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or ("localhost:4317" if self.protocol == "grpc" else "localhost:4318")
        )
        return f"OTLP {self.protocol} {endpoint}"


def _otlp_span_exporter(protocol: str) -> Any:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HTTPSpanExporter,
        )

        return HTTPSpanExporter()
    raise InvalidExportConfig(f"unsupported OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}")


def make_resource() -> Any:
    """Resource from OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (default ``pytest``)."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "pytest"}))
    return resource


class RunTracer:
    """Creates the session span and one span per test; owns the exporters."""

    def __init__(
        self,
        run_id: str,
        traces_path: Path | None,
        *,
        per_test_traces: bool = True,
        environ: Mapping[str, str] | None = None,
        extra_processors: tuple[Any, ...] = (),
    ) -> None:
        env = os.environ if environ is None else environ
        self.run_id = run_id
        self.per_test_traces = per_test_traces
        self.export = ExportConfig.from_environ(env)
        self.export_description = self.export.describe(env)
        self.traces_path = None if self.export.sdk_disabled else traces_path
        self._processors: list[Any] = []
        self._otlp_processors: list[Any] = []
        self._provider: Any = None
        self._running: dict[int, trace.Span] = {}
        self.session_span: trace.Span = NonRecordingSpan(_random_span_context())
        self._session_links: tuple[Link, ...] = ()
        self._session_token: object | None = None
        self._parent_context = TraceContextTextMapPropagator().extract(
            {k.lower(): v for k, v in env.items() if k in ("TRACEPARENT", "TRACESTATE")}
        )
        if self.export.sdk_disabled:
            self._tracer: trace.Tracer | None = None
            return
        self._tracer = self._make_tracer(env, extra_processors)

    def _make_tracer(self, env: Mapping[str, str], extra_processors: tuple[Any, ...]) -> Any:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=make_resource(), shutdown_on_exit=False)
        if self.traces_path is not None:
            from opentelemetry.exporter.otlp.json.file import FileSpanExporter

            self.traces_path.parent.mkdir(parents=True, exist_ok=True)
            self._processors.append(BatchSpanProcessor(FileSpanExporter(self.traces_path)))
        if self.export.otlp:
            self._otlp_processors.append(
                BatchSpanProcessor(_otlp_span_exporter(self.export.protocol))
            )
        for processor in (*self._processors, *self._otlp_processors, *extra_processors):
            provider.add_span_processor(processor)
        self._provider = provider
        return provider.get_tracer("pytest_taskctl")

    # -- session ----------------------------------------------------------------

    def start_session(self, attributes: Mapping[str, Any]) -> None:
        if self._tracer is not None:
            self.session_span = self._tracer.start_span(
                "pytest session",
                context=self._parent_context,
                kind=SpanKind.INTERNAL,
                attributes={"pytest.run_id": self.run_id, **attributes},
            )
        else:
            parent = trace.get_current_span(self._parent_context).get_span_context()
            self.session_span = NonRecordingSpan(
                _random_span_context(parent.trace_id if parent.is_valid else None)
            )
        self._session_token = otel_context.attach(trace.set_span_in_context(self.session_span))
        self._session_links = (Link(self.session_span.get_span_context()),)  # shared: immutable

    def end_session(self, run_status: str, attributes: Mapping[str, Any]) -> None:
        span = self.session_span
        span.set_attribute("test.suite.run.status", SUITE_STATUS.get(run_status, "aborted"))
        span.set_attribute("pytest.run_status", run_status)
        for key, value in attributes.items():
            span.set_attribute(key, value)
        if run_status != "COMPLETED":
            span.set_status(Status(StatusCode.ERROR, run_status))
        span.end()
        if self._session_token is not None:
            # It may belong to another context (pytester's in-process runs).
            with contextlib.suppress(Exception):
                otel_context.detach(self._session_token)  # type: ignore[arg-type]
            self._session_token = None

    @property
    def session_context(self) -> SpanContext:
        return self.session_span.get_span_context()

    # -- tests ------------------------------------------------------------------

    def start_test(self, nodeid: str, attributes: Mapping[str, Any]) -> tuple[trace.Span, object]:
        """Start a test's span and make it current; returns ``(span, token)``."""
        session = self.session_context
        if self._tracer is None:
            trace_id = session.trace_id if not self.per_test_traces else None
            span: trace.Span = NonRecordingSpan(_random_span_context(trace_id))
        elif self.per_test_traces:
            span = self._tracer.start_span(
                nodeid,
                context=otel_context.Context(),
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                links=self._session_links,
            )
        else:
            span = self._tracer.start_span(
                nodeid,
                context=trace.set_span_in_context(self.session_span),
                kind=SpanKind.INTERNAL,
                attributes=attributes,
            )
        token = otel_context.attach(trace.set_span_in_context(span))
        self._running[threading.get_ident()] = span  # one dict op: atomic under the GIL
        return span, token

    def end_test(self, span: trace.Span, token: object, outcome: TestOutcome) -> None:
        self._running.pop(threading.get_ident(), None)
        with contextlib.suppress(Exception):
            otel_context.detach(token)  # type: ignore[arg-type]
        if span.is_recording():
            span.set_attributes(
                {"test.case.result.status": outcome.status, "pytest.outcome": outcome.word}
            )
            if outcome.status == "fail":
                span.set_status(
                    Status(StatusCode.ERROR, f"{outcome.when}: {outcome.message}"[:500])
                )
                span.add_event(
                    "exception",
                    {"exception.message": outcome.message, "pytest.phase": outcome.when},
                )
            elif outcome.word in ("skipped", "xfailed") and outcome.message:
                span.set_attribute("pytest.skip_reason", outcome.message[:500])
        span.end()

    def fallback_span_context(self) -> SpanContext:
        """For code outside a test's context (e.g. a thread a test started).

        If exactly one test is running, that test; otherwise the session.
        """
        if threading.current_thread().name.startswith(PLUGIN_THREAD_PREFIXES):
            return self.session_context  # our own watch/writer/lease threads
        running = list(self._running.values())
        if len(running) == 1:
            return running[0].get_span_context()
        return self.session_context

    # -- shutdown ---------------------------------------------------------------

    def shutdown(self, deadline: float = EXPORT_DEADLINE) -> bool:
        """Flush the file, then give OTLP what is left of ``deadline``; never block longer."""
        start = time.monotonic()
        for processor in self._processors:
            processor.shutdown()  # local file: fast and must be complete
        if not self._otlp_processors:
            return True

        def shutdown_otlp() -> None:
            for processor in self._otlp_processors:
                processor.shutdown()

        return run_bounded(shutdown_otlp, deadline - (time.monotonic() - start))


def run_bounded(function: Any, deadline: float) -> bool:
    """Run ``function`` in a daemon thread and wait at most ``deadline`` seconds.

    For SDK shutdowns whose own timeouts are not honoured: the run ends on
    time and the thread is abandoned if the collector does not answer.
    """
    worker = threading.Thread(target=function, name="taskctl-bounded-shutdown", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline))
    return not worker.is_alive()


# -- the public trace id API ------------------------------------------------------

_active: RunTracer | None = None
_process_context: SpanContext | None = None


def activate(tracer: RunTracer | None) -> None:
    """Make ``tracer`` the one ``get_traceid`` falls back to outside test contexts."""
    global _active
    _active = tracer


def current_span_context() -> SpanContext:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return span_context
    if _active is not None:
        return _active.fallback_span_context()
    global _process_context
    if _process_context is None:
        _process_context = _random_span_context()
    return _process_context


def get_traceid() -> str:
    """The trace id of the test running in this context: 32 lower-case hex digits.

    Outside a test it is the session's trace id; in a thread started by a
    test (threads do not inherit context) it is that test's when only one
    test is running, else the session's.
    """
    return f"{current_span_context().trace_id:032x}"


def trace_headers() -> dict[str, str]:
    """Headers for the API under test: ``X-Trace-Id`` and a W3C ``traceparent``."""
    span_context = current_span_context()
    return {
        "X-Trace-Id": f"{span_context.trace_id:032x}",
        "traceparent": format_traceparent(span_context),
    }
