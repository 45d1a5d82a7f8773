"""Child spans under each test's root span: ``setup``, ``call``, ``teardown`` and fixtures.

A failing test's trace should say where its time went and what raised:
the phase spans do the first, their ``exception`` events the second. Each
phase span is current while its phase runs, so fixture spans, log events and
HTTP client spans of that phase land under it.

Each phase begins as the previous phase is reported -- ``setup`` when the
test's span starts (:meth:`PhaseSpans.test_started`), the next one from the
report of the one before (:meth:`PhaseSpans.phase_reported`) -- and takes its
final name and start from the report of its own phase (``report.when``,
``CallInfo.start``/``stop``): only the report knows which phase ran, whether
it failed (an ``xfail`` raises but does not fail) and its exception. Both
are called from the plugin's own protocol and report wrappers, so a phase
costs no hook call of its own: three more hook implementations a test cost
more than the spans themselves.

Registered by the plugin only when ``--taskctl-span-detail`` asks for it, and
:class:`FixtureSpans` (a ``pytest_fixture_setup`` wrapper) only for
``fixtures``: with ``test`` there is no hook of this module in the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace

from .events import is_failure, record_failure
from .spans import PhaseSpan

if TYPE_CHECKING:
    from .tracing import RunningTest

#: The run's ``child_span(name, attributes)`` once the session started, else None.
SpanSource = Callable[[], "Callable[[str, dict[str, Any] | None], trace.Span] | None"]
#: The run's ``start_phases(test_span)`` once the session started, else None.
PhaseSource = Callable[[], "Callable[[trace.Span], PhaseSpan | None] | None"]


class PhaseSpans:
    """``setup``, ``call`` and ``teardown`` spans under each test's span.

    One :class:`~.spans.PhaseSpan` a test, made current once, is each phase in turn.
    """

    def __init__(self, phases_of: PhaseSource) -> None:
        #: Asked once a test: the run's tracer exists only from session start.
        self._phases_of = phases_of
        #: Each running test's phase span, per thread (``--thread``), until its
        #: teardown report or the end of the test's protocol.
        self._open: dict[int, PhaseSpan] = {}

    def test_started(self, item: pytest.Item, test: RunningTest) -> None:
        """The test's span has started: its ``setup`` phase begins (a start observer of the run)."""
        start_phases = self._phases_of()
        span = start_phases(test.span) if start_phases is not None else None
        if span is not None:
            # On top of the current context, whatever other wrappers put there; not
            # detached at the test's end (that would drop what they attached since):
            # the test's own token restores the context when its protocol ends.
            otel_context.attach(trace.set_span_in_context(span))
            self._open[threading.get_ident()] = span

    def phase_reported(
        self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
    ) -> None:
        """End the reported phase and begin the next one (a report observer of the run).

        After ``setup`` comes ``call`` unless setup did not pass; a phase that does
        not run after all (``--setup-only``) is renamed by the report that comes.
        """
        when = report.when
        ident = threading.get_ident()
        span = self._open.get(ident)
        if span is None:
            return  # a report outside our protocol wrapper (no test span, no phases)
        span.settle(when, int(call.start * 1e9))
        end_time = int(call.stop * 1e9)
        if report.failed and call.excinfo is not None:
            record_failure(span, call.excinfo.value, end_time)
        span.end(end_time=end_time)
        if when == "teardown":
            del self._open[ident]
        else:
            span.next_phase("call" if when == "setup" and report.passed else "teardown")

    def test_ended(self, item: pytest.Item) -> None:
        """The test's protocol ended without the next phase's report (an interrupt, a
        runner that did not run it): its open phase ends here (an end observer of the run)."""
        span = self._open.pop(threading.get_ident(), None)
        if span is not None:
            span.end()

    def pytest_keyboard_interrupt(self) -> None:
        """Ctrl-C or ``pytest.exit``: phases still open on other threads end here."""
        for span in list(self._open.values()):
            span.end()
        self._open.clear()


class FixtureSpans:
    """One ``fixture <argname>`` span per fixture whose setup runs, in the test that ran it.

    ``pytest_fixture_setup`` is called only when a fixture is really set up,
    so a module- or session-scoped fixture appears once, under the ``setup``
    span (or ``call``, for ``request.getfixturevalue``) of the test that paid
    for it.
    """

    def __init__(self, spans_of: SpanSource) -> None:
        self._spans_of = spans_of

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        child_span = self._spans_of()
        if child_span is None:
            return (yield)
        span = child_span(
            f"fixture {fixturedef.argname}",
            {"pytest.fixture.name": fixturedef.argname, "pytest.fixture.scope": fixturedef.scope},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return (yield)
        except BaseException as exc:
            if is_failure(exc):
                record_failure(span, exc)
            raise
        finally:
            otel_context.detach(token)
            span.end()
