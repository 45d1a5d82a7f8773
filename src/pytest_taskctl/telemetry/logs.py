"""``logs/<run_id>/pytest.log`` with the trace id on every line, and the OTel logs pipeline.

Like pytest's own ``log_file``, the file handler sits on the root logger and
takes every logger's records that the suite's logging lets through, so test
code's ``logging`` lines land in the file with their test's trace id. The plugin's
per-test lines are handed to these handlers directly (:meth:`RunLog.line`):
pytest attaches its capture handlers to every logger, and those lines do not
belong in the captured-log sections of failure reports.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from .events import SpanEventHandler
from .export import EXPORT_DEADLINE, ExportConfig
from .log_forwarding import LogForwarder
from .traceid import get_traceid

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - [%(traceid)s] - %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
PLUGIN_LOGGER = "pytest_taskctl.plugin"
#: Our own loggers' records are always written, whatever level the suite's root logger has.
OWN_LOGGERS = "pytest_taskctl"


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


class RunLog:
    """Attaches the run's log handlers to the root logger for the session.

    Levels follow the suite, as pytest's own ``log_file`` does: the handlers
    take whatever the suite's logging lets through (or pytest's
    ``log_file_level``/``log_level`` when set), and the root logger is lowered
    only when asked (``--taskctl-log-level``). The plugin's own lines are
    always written (:meth:`line`), to the file only: the test's span already
    carries what they say.
    """

    def __init__(
        self,
        path: Path,
        *,
        root_level: int | None = None,
        handler_level: int = logging.NOTSET,
        export: ExportConfig | None = None,
    ) -> None:
        self.path = path
        self.root_level = root_level
        self.handler_level = handler_level if root_level is None else root_level
        self._export = export
        self._handlers: list[logging.Handler] = []
        self._saved_root_level: int | None = None
        self._file: BufferedFileHandler | None = None
        self._own_level_set = False

    def start(self, resource: Any = None, log_sink: Any = None) -> None:
        """Attach the handlers; ``log_sink`` (the span pipeline) takes OTel log records."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = BufferedFileHandler(self.path)
        file_handler.setLevel(self.handler_level)
        file_handler.addFilter(TraceIdFilter())
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        self._handlers.append(file_handler)
        self._file = file_handler
        if self._export is not None and not self._export.sdk_disabled:
            events = SpanEventHandler(self.handler_level)  # the file's records, as span events
            self._handlers.append(events)
        if self._export is not None and self._export.otlp_logs and log_sink is not None:
            log_sink.start_logs(resource, self._export.logs)
            self._handlers.append(LogForwarder(self.handler_level, log_sink.on_log))
        own = logging.getLogger(OWN_LOGGERS)
        if own.level == logging.NOTSET:
            own.setLevel(logging.INFO)
            self._own_level_set = True
        root = logging.getLogger()
        if self.root_level is not None:
            self._saved_root_level = root.level
            if root.level > self.root_level or root.level == logging.NOTSET:
                root.setLevel(self.root_level)
        for handler in self._handlers:
            root.addHandler(handler)

    def line(self, level: int, msg: str, *args: object, traceid: str | None = None) -> None:
        """Write one plugin line to ``pytest.log`` (not to pytest's capture, not to OTel).

        ``traceid``: the test's, when the caller has it (two lines a test), else the
        current one's.
        """
        if self._file is not None:
            self._file.write_line(level, PLUGIN_LOGGER, traceid or get_traceid(), msg % args)

    def stop(self, deadline: float = EXPORT_DEADLINE) -> bool:
        """Detach and close the handlers, then flush the OTel logs within ``deadline``.

        Detached first: the exporter's own warnings (an unreachable collector)
        must not come back into a handler that feeds the same exporter.
        """
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
            handler.close()
        self._handlers.clear()
        self._file = None
        if self._saved_root_level is not None:
            root.setLevel(self._saved_root_level)
            self._saved_root_level = None
        if self._own_level_set:
            logging.getLogger(OWN_LOGGERS).setLevel(logging.NOTSET)
            self._own_level_set = False
        return True  # OTel log records were sent with the spans (span pipeline's shutdown)
