"""Light spans for the plugin's own per-test spans: the test, its phases, its fixtures.

An SDK span costs tens of microseconds to start and end (sampler, bounded
attribute mappings with locks, span processor fan-out, a ``ReadableSpan``
copy at the end): with four or more spans per test that alone was above
the plugin's whole per-test budget. Our own spans need none of that
machinery: their names and attributes are ours, they are ended once, on
the thread that started them. A :class:`LightSpan` is a plain object that
implements the OpenTelemetry span API -- so ``trace.get_current_span()``,
``record_exception``, log events, child spans of the suite's own tracers
and HTTP instrumentations all work with it -- and is handed, when it ends,
to the same pipeline as SDK spans, which encodes both alike.

Sampling follows the SDK's rule for the run's provider: a test's root span
asks the provider's sampler (``OTEL_TRACES_SAMPLER``); children follow
their parent.

A test's phases are cheaper still (:class:`PhaseSpan`): one object for the
three of them. Phases and fixture spans that end while their test's span
records travel in the test's record (:attr:`LightSpan.children`): one
record, one hand-over to the span process, a test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from opentelemetry import trace
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .events import exception_attributes

#: As the SDK's default ``OTEL_SPAN_EVENT_COUNT_LIMIT``: a test that logs in a loop
#: must not grow one span without bound.
EVENT_LIMIT = 128
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
UNSET = Status(StatusCode.UNSET)


class LightEvent(NamedTuple):
    """A span event, with the field names the encoder reads from the SDK's ``Event``."""

    name: str
    attributes: Mapping[str, Any]
    timestamp: int


class LightSpan(trace.Span):
    """A recording span that is only a record: see the module docstring."""

    kind = SpanKind.INTERNAL
    #: The span (a test's) whose record takes this one if it ends while that one
    #: records: a phase, a fixture. None: this span is recorded on its own.
    carrier: LightSpan | None = None
    #: The ended spans this one carries (:meth:`carry`), in the order they ended.
    children: list[tuple[Any, ...]] | tuple[()] = ()
    #: How many of :attr:`children` already left while this span still ran (the
    #: pipeline hands them over at each drain, so a long or paused test shows its
    #: setup and fixtures). Only the drain thread reads and writes it.
    children_sent = 0

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any] | None,
        links: Sequence[Link],
        sink: Callable[[Any], None],
        resource: Any,
        scope: InstrumentationScope,
    ) -> None:
        self.name = name
        self._context = context
        self.parent = parent
        self.attributes: dict[str, Any] = attributes if attributes is not None else {}
        self.links = links
        #: Most spans get none: a shared empty tuple until the first one.
        self.events: list[LightEvent] | tuple[()] = ()
        self.status = UNSET
        self.start_time = time.time_ns()
        self.end_time: int | None = None
        self.resource = resource
        self.instrumentation_scope = scope
        self._sink = sink

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self.end_time is None

    # Changes after the end are ignored, as the SDK ignores them: the ended span's
    # fields may already be on their way to the span process.

    def set_attribute(self, key: str, value: Any) -> None:
        if self.end_time is None:
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self.end_time is None:
            self.attributes.update(attributes)

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None
    ) -> None:
        if self.end_time is not None:
            return
        events = self.events
        if not events:
            events = self.events = []
        if len(events) < EVENT_LIMIT:
            events.append(LightEvent(name, attributes or {}, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if self.end_time is None:
            self.links = (*self.links, Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if self.status.status_code is StatusCode.OK:
            return  # the SDK's rule: OK is final
        self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self.add_event(
            "exception", {**exception_attributes(exception), **(attributes or {})}, timestamp
        )

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is None:
            self.end_time = end_time or time.time_ns()
            carrier = self.carrier
            if carrier is not None and carrier.end_time is None:
                carrier.carry(self)
            else:
                self._sink(self)

    def own_span_id(self) -> int:
        return self._context.span_id

    def carry(self, child: LightSpan) -> None:
        """Keep ``child``, just ended, for this span's record: a
        :class:`~.span_records.ChildRecord` made of it on the drain thread."""
        if not self.children:
            self.children = []
        parent = child.parent
        self.children.append(
            (
                child.own_span_id(),
                parent.span_id if parent is not None else 0,
                child.name,
                child.start_time,
                child.end_time,
                child.attributes,
                child.events,
                child.links,
                child.status,
            )
        )


class PhaseSpan(LightSpan):
    """The span of a test's current phase: ``setup``, then ``call``, then ``teardown``.

    Three phase spans a test were three span objects, three contexts made
    current and three records to send: as much per-test work as everything
    else the plugin does for a span (``docs/benchmarks.md``). This one object
    is made current once for the whole test, and is each phase in turn: a
    phase gets its own span id, name, times, events and status, and when it
    ends (:meth:`end`) those are kept in the test's span, whose record takes
    them out of pytest's process. Whatever asks for the current span during a
    phase -- log events, fixture spans, HTTP client spans, the suite's
    ``trace.get_current_span()`` -- gets that phase; the span context of a
    phase is only made when something asks for it. An ended phase goes with
    the test's record (:meth:`LightSpan.carry`), or alone if the test's span
    ended first (an interrupt on another thread). (A reference kept from one
    phase and used in a later one acts on the later phase.)
    """

    def __init__(self, test: LightSpan, name: str, new_span_id: Callable[[], int]) -> None:
        # Not LightSpan.__init__: the context is made lazily, the rest comes from the test
        # or from next_phase (a test checks that no field of LightSpan's is missing).
        self.carrier = test  # ended phases go with the test's record
        self._new_span_id = new_span_id
        self._test_context = self.parent = test.get_span_context()
        self.resource = test.resource
        self.instrumentation_scope = test.instrumentation_scope
        self._sink = test._sink
        self.next_phase(name)

    def next_phase(self, name: str) -> None:
        """Begin the next phase (after :meth:`end` of the one before)."""
        self.name = name
        self.span_id = self._new_span_id()
        self._phase_context: SpanContext | None = None
        self.attributes = {}
        self.events = ()
        self.links = ()
        self.status = UNSET
        self.start_time = time.time_ns()
        self.end_time = None

    def get_span_context(self) -> SpanContext:
        context = self._phase_context
        if context is None:
            test = self._test_context
            context = self._phase_context = SpanContext(
                test.trace_id, self.span_id, False, test.trace_flags, test.trace_state
            )
        return context

    def own_span_id(self) -> int:
        return self.span_id

    def settle(self, name: str, start_time: int) -> None:
        """Give the phase, begun ahead of its work, its final name and start (ns since
        the epoch): only its report says which phase ran and when.

        An event it got before ``start_time`` (a log line of a report hook between
        two phases) moves the start back to it: a span's events lie within it.
        """
        self.name = name
        if self.events:
            start_time = min(start_time, *(event.timestamp for event in self.events))
        self.start_time = start_time


class LightTracer:
    """Starts :class:`LightSpan` s with the run's ids, resource, sampler and pipeline."""

    def __init__(self, provider: Any, id_generator: Any, sink: Callable[[Any], None]) -> None:
        self._sampler = provider.sampler
        #: The default sampler keeps every root span: no call per test to ask it.
        self._keeps_every_root = _keeps_every_root(provider.sampler)
        self._resource = provider.resource
        self._ids = id_generator
        self._sink = sink
        self.scope = InstrumentationScope("pytest_taskctl")

    def start_root(
        self, name: str, attributes: dict[str, Any], links: Sequence[Link] = ()
    ) -> trace.Span:
        """The root span of a new trace (a test's span), if the sampler keeps it."""
        trace_id = self._ids.generate_trace_id()
        if self._keeps_every_root:
            flags = SAMPLED
        else:
            decision = self._sampler.should_sample(
                None, trace_id, name, SpanKind.INTERNAL, attributes, links
            )
            flags = SAMPLED if decision.decision.is_sampled() else TraceFlags(0)
        context = SpanContext(trace_id, self._ids.generate_span_id(), False, flags)
        return self._span(name, context, None, attributes, links)

    def start_child(
        self,
        name: str,
        parent: SpanContext,
        attributes: dict[str, Any] | None = None,
        links: Sequence[Link] = (),
    ) -> trace.Span:
        """A child of ``parent`` (same trace); recorded only if the parent is sampled."""
        context = SpanContext(
            parent.trace_id, self._ids.generate_span_id(), False, parent.trace_flags
        )
        return self._span(name, context, parent, attributes, links)

    def start_carried(
        self, name: str, current: trace.Span, attributes: dict[str, Any] | None = None
    ) -> trace.Span:
        """A child of ``current`` (the current span) that ends within it -- a fixture's
        setup: carried in the record of ``current``'s test when that is a span of ours."""
        span = self.start_child(name, current.get_span_context(), attributes)
        if isinstance(current, LightSpan) and type(span) is LightSpan:
            span.carrier = current.carrier or current
        return span

    def start_phases(self, test: trace.Span) -> PhaseSpan | None:
        """The ``setup`` phase of ``test`` (a span of this tracer); None when the test's
        span records nothing (sampled out)."""
        if type(test) is not LightSpan:
            return None
        return PhaseSpan(test, "setup", self._ids.generate_span_id)

    def _span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any] | None,
        links: Sequence[Link],
    ) -> trace.Span:
        """Recorded when the trace is sampled; else only carries its context."""
        if not context.trace_flags.sampled:
            return trace.NonRecordingSpan(context)
        return LightSpan(
            name, context, parent, attributes, links, self._sink, self._resource, self.scope
        )


def _keeps_every_root(sampler: Any) -> bool:
    """``always_on`` or ``parentbased_always_on`` (the SDK's default) for a span without parent."""
    from opentelemetry.sdk.trace import sampling

    if sampler is sampling.ALWAYS_ON:
        return True
    root = getattr(sampler, "_root", None)  # the SDK keeps the root sampler there
    return isinstance(sampler, sampling.ParentBased) and root is sampling.ALWAYS_ON
