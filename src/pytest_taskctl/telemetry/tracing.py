"""OpenTelemetry spans for the session and every test.

We build our own ``TracerProvider`` (the global one belongs to the user),
configured from the standard ``OTEL_*`` variables (:mod:`.export`). Spans
always go to ``logs/<run_id>/traces.jsonl`` (OTLP/JSON, replayable by the
Collector's ``otlpjsonfile`` receiver) and, when an endpoint is configured,
over OTLP, both through one :class:`~.pipeline.SpanPipeline`, whose span
process (:mod:`.span_process`) encodes each span once. Spans leave pytest's
process every half second, so a run killed with SIGKILL loses at most the
last half second of spans.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..outcome import TestOutcome
from ..status import SUITE_STATUS
from .events import record_failure
from .export import EXPORT_DEADLINE, ExportConfig
from .spans import LightTracer
from .traceid import ID_GENERATOR, random_span_context

#: Threads of our own: code on them belongs to the session, not to a test.
PLUGIN_THREAD_PREFIXES = ("taskctl-", "OtelBatch")  # OtelBatch: the OTel logs processor


class RunningTest(NamedTuple):
    """A running test: its node id, span, the token that made the span current, and its
    trace id as text -- each made once a test."""

    nodeid: str
    span: trace.Span
    token: object
    #: 32 lower-case hex digits: ``pytest.log`` lines, reports, JUnit properties.
    traceid: str


def attributes_of_test(item: Any, nodeid: str, run_id: str) -> dict[str, Any]:
    """The test span's attributes: ``test.*`` and ``code.*`` semantic conventions."""
    attributes: dict[str, Any] = {
        "test.case.name": nodeid,
        "pytest.run_id": run_id,
        "code.file.path": str(item.path),
    }
    line = item.location[1]
    if line is not None:
        attributes["code.line.number"] = line + 1
    function = getattr(item, "function", None)
    if function is not None:
        attributes["code.function.name"] = f"{function.__module__}.{function.__qualname__}"
    return attributes


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
        failures_on_root: bool = False,
        export: ExportConfig,
    ) -> None:
        self.run_id = run_id
        self.per_test_traces = per_test_traces
        #: ``--taskctl-span-detail test``: no phase spans, exceptions go on the test's span.
        self.failures_on_root = failures_on_root
        self.export = export
        self.export_description = export.describe()
        self.traces_path = None if self.export.sdk_disabled else traces_path
        self._pipeline: Any = None
        self._light: LightTracer | None = None
        self._provider: Any = None
        self._running: dict[int, trace.Span] = {}
        self.session_span: trace.Span = NonRecordingSpan(random_span_context())
        self._session_links: tuple[Link, ...] = ()
        self._session_token: object | None = None
        self._parent_context = TraceContextTextMapPropagator().extract(dict(export.parent_carrier))
        if self.export.sdk_disabled:
            self._tracer: trace.Tracer | None = None
            return
        self._tracer = self._make_tracer()

    def _make_tracer(self) -> Any:
        from opentelemetry.sdk.trace import TracerProvider

        from .pipeline import SpanPipeline

        provider = TracerProvider(
            resource=make_resource(), shutdown_on_exit=False, id_generator=ID_GENERATOR
        )
        otlp = self.export.traces if self.export.otlp_traces else None
        # One dict read under the GIL: a consistent list of the running tests' spans.
        self._pipeline = SpanPipeline(self.traces_path, otlp, lambda: list(self._running.values()))
        provider.add_span_processor(self._pipeline)
        self._provider = provider
        self._light = LightTracer(provider, ID_GENERATOR, self._pipeline.on_end)
        # The SDK's get_tracer adds a process-wide warnings filter on every call;
        # the suite's filters must stay as the suite set them.
        with warnings.catch_warnings():
            return provider.get_tracer("pytest_taskctl")

    @property
    def resource(self) -> Any:
        """The run's resource (spans and OTel logs alike); made here when tracing is off."""
        return self._provider.resource if self._provider is not None else make_resource()

    @property
    def span_pipeline(self) -> Any:
        """Where finished spans -- and OTel log records -- go (None with the SDK off)."""
        return self._pipeline

    @property
    def tracer_provider(self) -> Any:
        """Our own TracerProvider (None with the SDK disabled); never the global one."""
        return self._provider

    # -- session ----------------------------------------------------------------

    def start_session(self, attributes: Mapping[str, Any], joined: str | None = None) -> None:
        """Start the ``pytest session`` span, or join another process's (``joined``).

        ``joined`` is a traceparent: a pytest-xdist worker's tests link to
        the controller's session span and the worker makes none of its own,
        so a distributed run is one session in the trace viewer.
        """
        remote = trace.get_current_span(
            TraceContextTextMapPropagator().extract({"traceparent": joined} if joined else {})
        ).get_span_context()
        if remote.is_valid:
            self.session_span = NonRecordingSpan(remote)
        elif self._tracer is not None:
            self.session_span = self._tracer.start_span(
                "pytest session",
                context=self._parent_context,
                kind=SpanKind.INTERNAL,
                attributes={"pytest.run_id": self.run_id, **attributes},
            )
        else:
            parent = trace.get_current_span(self._parent_context).get_span_context()
            self.session_span = NonRecordingSpan(
                random_span_context(parent.trace_id if parent.is_valid else None)
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

    def start_test(self, nodeid: str, attributes: Mapping[str, Any]) -> RunningTest:
        """Start a test's span and make it current."""
        session = self.session_context
        if self._light is None:
            trace_id = session.trace_id if not self.per_test_traces else None
            span: trace.Span = NonRecordingSpan(random_span_context(trace_id))
        elif self.per_test_traces:
            span = self._light.start_root(nodeid, dict(attributes), self._session_links)
        else:
            span = self._light.start_child(nodeid, session, dict(attributes))
        token = otel_context.attach(trace.set_span_in_context(span))
        self._running[threading.get_ident()] = span  # one dict op: atomic under the GIL
        return RunningTest(nodeid, span, token, f"{span.get_span_context().trace_id:032x}")

    def end_test(self, test: RunningTest, outcome: TestOutcome) -> None:
        """End the test's span with its outcome; its context stays current until
        :meth:`leave_test`."""
        span = test.span
        self._running.pop(threading.get_ident(), None)
        if span.is_recording():
            span.set_attributes(
                {"test.case.result.status": outcome.status, "pytest.outcome": outcome.word}
            )
            if outcome.attempts > 1:  # a rerun plugin ran it again: the last attempt counts
                span.set_attribute("pytest.reruns", outcome.attempts - 1)
            if outcome.status == "fail":
                span.set_status(
                    Status(StatusCode.ERROR, f"{outcome.when}: {outcome.message}"[:500])
                )
            elif outcome.word in ("skipped", "xfailed") and outcome.message:
                span.set_attribute("pytest.skip_reason", outcome.message[:500])
        span.end(end_time=int(outcome.stop * 1e9) if outcome.stop else None)

    def leave_test(self, test: RunningTest) -> None:
        """Restore the context from before the test (its phases' contexts with it)."""
        with contextlib.suppress(Exception):
            otel_context.detach(test.token)  # type: ignore[arg-type]

    def child_span(self, name: str, attributes: dict[str, Any] | None = None) -> trace.Span:
        """A span of ours (a fixture's) under the current span, not yet current itself;
        it goes with its test's record when it ends within the test."""
        current = trace.get_current_span()
        if self._light is None or not current.get_span_context().is_valid:
            return NonRecordingSpan(current.get_span_context())
        return self._light.start_carried(name, current, attributes)

    def start_phases(self, test_span: trace.Span) -> trace.Span | None:
        """The span of the test's phases (:class:`~.spans.PhaseSpan`), in its ``setup``
        phase; None when the test's span records nothing."""
        return self._light.start_phases(test_span) if self._light is not None else None

    def phase_failed(self, span: trace.Span, exc: BaseException, when: float) -> None:
        """A phase raised (at ``when``, epoch s): its ``exception`` event goes on the test's
        span when there are no phase spans to carry it (:mod:`.detail` does it otherwise)."""
        if self.failures_on_root:
            record_failure(span, exc, int(when * 1e9))

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
        if self._pipeline is None:
            return True
        self._pipeline.shutdown(deadline)  # local file: fast and must be complete
        return bool(self._pipeline.close_sender(deadline - (time.monotonic() - start)))
