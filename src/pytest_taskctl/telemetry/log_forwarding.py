"""OTel log records leave pytest's process as plain tuples; the span process exports them.

The SDK's logs pipeline in pytest's process cost every test, even one that
logs nothing: its modules add ~50 loggers and two non-propagating ones, and
pytest walks every logger and attaches its capture handlers to each
non-propagating one six times per test; its OTLP exporter imported gRPC
on the session's start-up path. So pytest's process keeps only
:class:`LogForwarder`, which turns a record into a tuple (message, level,
extra attributes, exception, trace context), and the span process
(:mod:`.span_process`) runs the SDK's own pipeline on them with
:class:`LogExport`: the maintained ``LoggingHandler`` translates a record
rebuilt from the tuple, in the trace context it was logged in, and the
``BatchLogRecordProcessor`` sends it with the OTLP exporter.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace

from .span_records import plain_attributes

#: Set on the span process's own warnings when pytest's process logs them: they are
#: not sent back to the exporter they are about (a dead collector would loop).
FROM_SPAN_PROCESS = "taskctl_from_span_process"
#: What every LogRecord has: the rest is the suite's ``extra=``, sent as attributes.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class LogForwarder(logging.Handler):
    """Hands each record it gets to ``sink`` as a tuple (see :func:`rebuild`)."""

    def __init__(self, level: int, sink: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__(level)
        self._sink = sink

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the sink is a deque append.
        if record.levelno < self.level or getattr(record, FROM_SPAN_PROCESS, False):
            return False
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the test that logged it
            message = str(record.msg)
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        exception = None
        if record.exc_info and record.exc_info[0] is not None:
            kind, value, tb = record.exc_info
            exception = (
                kind.__name__,
                str(value.args[0]) if value is not None and value.args else None,
                "".join(traceback.format_exception(kind, value, tb)) if tb is not None else None,
            )
        context = trace.get_current_span().get_span_context()
        self._sink(
            (
                record.name,
                record.levelno,
                record.levelname,
                message,
                record.created,
                plain_attributes(extra, maps=True),
                exception,
                context.trace_id,
                context.span_id,
                int(context.trace_flags),
            )
        )
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


def rebuild(entry: Sequence[Any]) -> tuple[logging.LogRecord, Any]:
    """The record and the span context it was logged in (in the span process)."""
    name, levelno, levelname, message, created, extra, exception, trace_id, span_id, flags = entry
    record = logging.makeLogRecord(
        {"name": name, "levelno": levelno, "levelname": levelname, "msg": message,
         "args": None, "created": created, **extra}
    )  # fmt: skip
    if exception is not None:  # as the SDK's handler would have made them from exc_info
        for key, value in zip(
            ("exception.type", "exception.message", "exception.stacktrace"), exception, strict=True
        ):
            if value is not None:
                setattr(record, key, value)
    context = trace.SpanContext(trace_id, span_id, False, trace.TraceFlags(flags))
    return record, context


class LogExport:
    """The SDK's logs pipeline in the span process: built with the first records."""

    def __init__(self, resource: Sequence[Any], make_exporter: Callable[[], Any]) -> None:
        self._resource = resource
        self._make_exporter = make_exporter
        self._provider: Any = None
        self._handler: Any = None

    def write(self, entries: Sequence[Sequence[Any]]) -> None:
        from opentelemetry import context as otel_context

        if self._handler is None:
            self._start()
        for entry in entries:
            record, span_context = rebuild(entry)
            span = trace.NonRecordingSpan(span_context)
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                self._handler.emit(record)
            finally:
                otel_context.detach(token)

    def _start(self) -> None:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource

        attributes, schema_url = self._resource
        resource = Resource(attributes, schema_url or None)
        self._provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self._provider.add_log_record_processor(BatchLogRecordProcessor(self._make_exporter()))
        self._handler = LoggingHandler(logger_provider=self._provider)

    def shutdown(self) -> None:
        """Send what is queued (the caller bounds it: the SDK ignores its own timeout)."""
        if self._provider is not None:
            self._provider.shutdown()
