"""Span events: failures as OpenTelemetry ``exception`` events, log records as ``log`` events.

A trace viewer shows a span's events as its logs, so a failing test's trace
carries the stack trace on the span of the phase (or fixture) that raised,
and the test's own log lines on the span that was current when they were
written. Both follow the semantic conventions where they exist
(``exception.*``, ``code.*``).
"""

from __future__ import annotations

import logging
import traceback
from types import TracebackType

import pytest
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

#: Top-level packages whose frames sit in front of the test's own code: pytest,
#: pluggy and plugins (``pytest_*``, this one included). They say nothing about a failure.
_FRAMEWORK_PACKAGES = frozenset({"_pytest", "pluggy", "pytest"})
#: Outcomes that are not failures although they travel as exceptions.
NOT_FAILURES: tuple[type[BaseException], ...] = (
    pytest.skip.Exception,
    pytest.xfail.Exception,
    pytest.exit.Exception,
)
STATUS_DESCRIPTION_LIMIT = 500


def exception_type(exc: BaseException) -> str:
    """``AssertionError`` for builtins, ``package.module.Name`` for everything else."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_framework(tb: TracebackType) -> bool:
    package = str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0]
    return package in _FRAMEWORK_PACKAGES or package.startswith("pytest_")


def _own_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame of the suite's own code (all of it if none)."""
    first = tb
    while first is not None and _is_framework(first):
        first = first.tb_next
    return first or tb


def exception_attributes(exc: BaseException) -> dict[str, str]:
    """``exception.type``, ``exception.message`` and ``exception.stacktrace`` of ``exc``."""
    return {
        "exception.type": exception_type(exc),
        "exception.message": str(exc),
        "exception.stacktrace": "".join(
            traceback.format_exception(type(exc), exc, _own_frames(exc.__traceback__))
        ),
    }


def record_failure(span: trace.Span, exc: BaseException, timestamp: int | None = None) -> None:
    """An ``exception`` event on ``span`` and status ERROR, the OpenTelemetry way.

    ``timestamp`` (ns): when the phase raised, if the report came later.
    """
    if not span.is_recording():
        return
    attributes = exception_attributes(exc)
    span.add_event("exception", attributes, timestamp=timestamp)
    description = f"{attributes['exception.type']}: {attributes['exception.message']}"
    span.set_status(Status(StatusCode.ERROR, description[:STATUS_DESCRIPTION_LIMIT]))


def is_failure(exc: BaseException) -> bool:
    """False for skips, xfails and ``pytest.exit``: they end a phase without failing it."""
    return not isinstance(exc, NOT_FAILURES)


class SpanEventHandler(logging.Handler):
    """Adds each record it gets as a ``log`` event to the span current where it was logged.

    It sits on the root logger beside the file handler, at the same level, so
    a span shows exactly the records ``pytest.log`` gets. Records logged where
    no span of ours is recording (export threads, after the run) are dropped.
    """

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the span takes its own lock to add the event.
        if record.levelno < self.level:
            return False
        span = trace.get_current_span()
        if not span.is_recording():
            return False
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the test that logged it
            message = str(record.msg)
        attributes: dict[str, str | int] = {
            "log.message": message,
            "log.severity": record.levelname,
            "log.logger": record.name,
            "code.file.path": record.pathname,
            "code.line.number": record.lineno,
            "code.function.name": record.funcName,
        }
        if record.exc_info and record.exc_info[1] is not None:
            attributes.update(exception_attributes(record.exc_info[1]))
        span.add_event("log", attributes, timestamp=int(record.created * 1e9))
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)
