"""``logs/<run_id>/pytest.log`` with the trace id on every line, and the OTel logs pipeline.

Like pytest's own ``log_file``, the file handler sits on the root logger and
takes every logger's records at the configured level, so test code's
``logging`` lines land in the file with their test's trace id. The plugin's
per-test lines are handed to these handlers directly (:meth:`RunLog.line`):
pytest attaches its capture handlers to every logger, and those lines do not
belong in the captured-log sections of failure reports.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .tracing import get_traceid, sdk_disabled

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - [%(traceid)s] - %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
PLUGIN_LOGGER = "pytest_taskctl.plugin"


class TraceIdFilter(logging.Filter):
    """Stamps each record with the trace id of the context that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "traceid"):
            record.traceid = get_traceid()
        return True


class BufferedFileHandler(logging.FileHandler):
    """A FileHandler that does not flush on every record.

    ``logging.FileHandler`` makes a write system call per record; with two
    plugin lines per test that is a measurable share of the per-test cost.
    Records are flushed when a WARNING or worse arrives, when ``interval``
    has passed since the last flush, and by a background flusher, so
    ``tail -f`` lags by at most ``interval`` seconds.
    """

    def __init__(self, path: Path, interval: float = 0.2) -> None:
        super().__init__(path, mode="a", encoding="utf-8")
        self.interval = interval
        self._last_flush = time.monotonic()
        self._dirty = False
        self._stamp_second = -1
        self._stamp = ""
        self._stopped = threading.Event()  # not _closed: FileHandler.close sets that to True
        self._flusher = threading.Thread(target=self._flush_loop, name="taskctl-log", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record) + self.terminator, record.levelno)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _write(self, line: str, levelno: int) -> None:
        stream = self.stream
        assert stream is not None  # opened in __init__ (delay=False)
        stream.write(line)
        now = time.monotonic()
        if levelno >= logging.WARNING or now - self._last_flush >= self.interval:
            self.flush()
        else:
            self._dirty = True

    def write_line(self, levelno: int, name: str, traceid: str, message: str) -> None:
        """The formatted line of ``LOG_FORMAT`` without a LogRecord (the per-test fast path)."""
        now = time.time()
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime(DATE_FORMAT, time.localtime(now))
        line = (
            f"{self._stamp} - {name} - {logging.getLevelName(levelno)} - [{traceid}] - {message}\n"
        )
        with self.lock:  # type: ignore[union-attr]
            self._write(line, levelno)

    def flush(self) -> None:
        self._dirty = False
        self._last_flush = time.monotonic()
        super().flush()

    def _flush_loop(self) -> None:
        while not self._stopped.wait(self.interval):
            if self._dirty:
                self.acquire()
                try:
                    if self.stream is not None:
                        self.flush()
                finally:
                    self.release()

    def close(self) -> None:
        self._stopped.set()
        super().close()


def parse_level(value: str | int, source: str) -> int:
    if isinstance(value, int):
        return value
    text = value.strip().upper()
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text)
    if not isinstance(level, int):
        raise ValueError(
            f"invalid log level {value!r} from {source}: "
            "use DEBUG, INFO, WARNING, ERROR or a number"
        )
    return level


def _otel_logs_wanted(environ: Mapping[str, str]) -> bool:
    exporters = {n.strip().lower() for n in environ.get("OTEL_LOGS_EXPORTER", "").split(",") if n}
    if "none" in exporters or sdk_disabled(environ):
        return False
    endpoint = environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return "otlp" in exporters or bool(endpoint)


def _otel_log_exporter(environ: Mapping[str, str]) -> Any:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    else:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (  # type: ignore[assignment]
            OTLPLogExporter,
        )
    return OTLPLogExporter()


class RunLog:
    """Attaches the run's log handlers for the session and removes them after."""

    def __init__(self, path: Path, level: int, environ: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.level = level
        self._environ = os.environ if environ is None else environ
        self._handlers: list[logging.Handler] = []
        self._logger_provider: Any = None
        self._saved_root_level: int | None = None
        self._file_only: BufferedFileHandler | None = None
        self._plugin_logger = logging.getLogger(PLUGIN_LOGGER)

    def start(self, resource: Any = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = BufferedFileHandler(self.path)
        file_handler.setLevel(self.level)
        file_handler.addFilter(TraceIdFilter())
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        self._handlers.append(file_handler)
        self._file_only = file_handler
        if _otel_logs_wanted(self._environ):
            self._handlers.append(self._otel_handler(resource))
            self._file_only = None

        root = logging.getLogger()
        self._saved_root_level = root.level
        if root.level > self.level or root.level == logging.NOTSET:
            root.setLevel(self.level)
        for handler in self._handlers:
            root.addHandler(handler)

    def line(self, level: int, msg: str, *args: object) -> None:
        """Write one plugin line to the run's handlers only (not to pytest's capture)."""
        if level < self.level:
            return
        if self._file_only is not None:
            # No OTel handler: skip LogRecord, Filter and Formatter (a third of
            # the plugin's per-test cost in a large run).
            self._file_only.write_line(level, PLUGIN_LOGGER, get_traceid(), msg % args)
            return
        record = self._plugin_logger.makeRecord(PLUGIN_LOGGER, level, "", 0, msg, args, None)
        for handler in self._handlers:
            if level >= handler.level:
                handler.handle(record)

    def _otel_handler(self, resource: Any) -> logging.Handler:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_log_record_processor(
            BatchLogRecordProcessor(_otel_log_exporter(self._environ))
        )
        self._logger_provider = provider
        return LoggingHandler(level=self.level, logger_provider=provider)

    def begin_shutdown(self) -> threading.Thread | None:
        """Start flushing the OTel logs pipeline in the background (bounded by the caller)."""
        provider, self._logger_provider = self._logger_provider, None
        if provider is None:
            return None
        flushing = threading.Thread(
            target=provider.shutdown, name="taskctl-logs-flush", daemon=True
        )
        flushing.start()
        return flushing

    def stop(self) -> None:
        """Detach and close the handlers (the file is complete after this)."""
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
            handler.close()
        self._handlers.clear()
        self._file_only = None
        if self._saved_root_level is not None:
            root.setLevel(self._saved_root_level)
            self._saved_root_level = None
        flushing = self.begin_shutdown()  # when nobody started it: give it a moment
        if flushing is not None:
            flushing.join(1.0)
