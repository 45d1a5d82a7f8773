"""The trace id of the running test, and the ids themselves.

``get_traceid`` and ``trace_headers`` are the public face of the plugin: a
test sends them to the API under test. They work in any thread and with the
SDK disabled (the ids are then made here, never all zeros).

Span and trace ids come from :class:`PrivateIdGenerator`, never from the
global :mod:`random` module: a suite that seeds ``random`` must draw the
same numbers with and without the plugin.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Protocol

from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanContext


class PrivateIdGenerator(IdGenerator):
    """Random span and trace ids from a generator of our own, seeded from the OS.

    ``random.Random`` is as fast as the SDK's default (which calls the global
    ``random.getrandbits``); it is not shared with anyone, so it needs no lock
    beyond the GIL that ``getrandbits`` already holds.
    """

    def __init__(self) -> None:
        self._random = random.Random(os.urandom(32))

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1


ID_GENERATOR = PrivateIdGenerator()


def random_span_context(trace_id: int | None = None) -> SpanContext:
    """A valid, unsampled span context: ids exist even when the SDK is disabled."""
    return SpanContext(
        trace_id=trace_id or ID_GENERATOR.generate_trace_id(),
        span_id=ID_GENERATOR.generate_span_id(),
        is_remote=False,
        trace_flags=trace.TraceFlags(0),
    )


def format_traceparent(span_context: SpanContext) -> str:
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )


class FallbackContext(Protocol):
    """What answers for code outside a test's context (the run's tracer)."""

    def fallback_span_context(self) -> SpanContext: ...


_active: FallbackContext | None = None
_process_context: SpanContext | None = None
_process_lock = threading.Lock()


def activate(tracer: FallbackContext | None) -> None:
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
    with _process_lock:
        if _process_context is None:
            _process_context = random_span_context()
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
