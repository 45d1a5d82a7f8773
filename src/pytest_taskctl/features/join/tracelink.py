"""Every process of a joined run shares the trace context of the process that planned it.

Each process has its own session span (the span lives where the work
happens); those of the later processes link to the planning process's
session span and carry its traceparent, so a trace viewer leads from any
process to the run's first trace.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("pytest_taskctl.plugin")


def link_session(session_span: Any, traceparent: object) -> None:
    if not isinstance(traceparent, str) or session_span is None:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        remote = trace.get_current_span(context).get_span_context()
        if not remote.is_valid:
            return
        session_span.set_attribute("pytest.run.traceparent", traceparent)
        session_span.set_attribute("pytest.run.trace_id", f"{remote.trace_id:032x}")
        session_span.add_link(remote, {"pytest.link": "joined run"})
    except Exception as exc:  # an SDK without add_link: the attributes still say it
        log.debug("join: could not link the session span: %s", exc)
