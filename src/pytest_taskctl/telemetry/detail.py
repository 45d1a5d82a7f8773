"""Child spans under each test's root span: ``setup``, ``call``, ``teardown`` and fixtures.

A failing test's trace should say where its time went and what raised:
the phase spans do the first, their ``exception`` events the second. Each
phase span is current while its phase runs, so fixture spans, log events and
HTTP client spans of that phase land under it.

A phase span is started by a hook wrapper around the phase and ended by the
report of that phase (:meth:`PhaseSpans.phase_reported`), with the
end time taken when the phase returned: only the report knows whether the
phase failed (an ``xfail`` raises but does not fail) and carries its exception.

Registered by the plugin only when ``--taskctl-span-detail`` asks for it, and
:class:`FixtureSpans` (a ``pytest_fixture_setup`` wrapper) only for
``fixtures``: with ``test`` there is no hook of this module in the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace

from .events import is_failure, record_failure

#: The running phase's span and the time (ns) its phase returned, until its report.
PHASE_KEY = pytest.StashKey[tuple[trace.Span, int]]()

#: The run's ``child_span(name, attributes)`` once the session started, else None.
SpanSource = Callable[[], "Callable[[str, dict[str, Any] | None], trace.Span] | None"]


class PhaseSpans:
    """``setup``, ``call`` and ``teardown`` spans under each test's span."""

    def __init__(self, spans_of: SpanSource) -> None:
        #: Asked once per phase: the run's tracer exists only from session start.
        self._spans_of = spans_of

    def _phase(self, item: pytest.Item, name: str) -> Generator[None, object, object]:
        child_span = self._spans_of()
        if child_span is None:
            return (yield)
        span = child_span(name, None)  # parent: the test's span, current here
        token = otel_context.attach(trace.set_span_in_context(span))
        reported = True
        try:
            return (yield)
        except (KeyboardInterrupt, pytest.exit.Exception):
            reported = False  # pytest re-raises these without a report
            raise
        finally:
            otel_context.detach(token)
            if reported:
                item.stash[PHASE_KEY] = (span, time.time_ns())
            else:
                span.end()

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, object, object]:
        return (yield from self._phase(item, "setup"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        return (yield from self._phase(item, "call"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        return (yield from self._phase(item, "teardown"))

    def phase_reported(
        self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
    ) -> None:
        """End the phase's span (a report observer of the run, see ``TaskRun``)."""
        pending = item.stash.get(PHASE_KEY, None)
        if pending is not None:
            del item.stash[PHASE_KEY]
            span, end_time = pending
            if report.failed and call.excinfo is not None:
                record_failure(span, call.excinfo.value, end_time)
            span.end(end_time=end_time)


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
