"""The span pipeline: finished spans leave pytest's process as records, twice a second.

The SDK's way -- a ``BatchSpanProcessor`` per destination, each exporter
walking every span again on threads of pytest's process -- cost more than
the tests it measured. Here a finished span is appended to a deque (the only
work on the test's thread); a thread wakes every half second, turns what
arrived into records (:mod:`.span_records`) and writes them to the span
process (:mod:`.span_process`), which encodes them once, appends them to
``traces.jsonl`` and sends them over OTLP. A SIGKILL loses at most the last
half second of spans, whatever the network does.

When the span process cannot be started, a :class:`~.span_writer.SpanWriter`
does the same work on this thread, in pytest's process.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from .export import SignalExport
from .span_process import ProcessSink
from .span_records import Recorder, plain_attributes
from .span_writer import SpanWriter

log = logging.getLogger("pytest_taskctl.plugin")

#: How often finished spans leave pytest's process (s): the most a SIGKILL can lose.
FILE_SCHEDULE = 0.5


def start_sink(
    path: Path | None, otlp: SignalExport | None, environ: Mapping[str, str] | None = None
) -> ProcessSink | SpanWriter:
    """The span process, or this process's own writer when it cannot be started."""
    try:
        return ProcessSink.start(path, otlp, os.environ if environ is None else environ)
    except OSError as exc:
        log.warning("span process not started (%s); encoding spans in pytest's process", exc)
        return SpanWriter(path, otlp.make_encoded_span_exporter if otlp is not None else None)


class SpanPipeline(SpanProcessor):
    """A span processor that hands finished spans to the span process."""

    def __init__(
        self,
        path: Path | None,
        otlp: SignalExport | None,
        running: Callable[[], list[Any]] = list,
    ) -> None:
        self._spans: collections.deque[ReadableSpan] = collections.deque()
        #: The spans of the tests running now: the phases and fixtures they carry so far
        #: leave at each drain too (a long or paused test shows them in the trace).
        self._running = running
        #: OTel log records (:mod:`.log_forwarding`), when OTLP logs are on.
        self._logs: collections.deque[tuple[Any, ...]] = collections.deque()
        self._recorder = Recorder()
        self._path = path
        self._otlp = otlp
        #: The environment as the session started, for a span process started later.
        self._environ = dict(os.environ)
        self._logs_closed = False
        #: Started with the first spans that leave while the run goes on: a run shorter
        #: than FILE_SCHEDULE (pytester's, a quick rerun) writes its few spans at its end,
        #: here, without a second interpreter. With OTLP at once: gRPC imports while
        #: pytest collects.
        self._sink: ProcessSink | SpanWriter | None = None
        if path is not None:  # there from the start, as `tail -f` expects
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        if otlp is not None:
            self._sink = start_sink(path, otlp)
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # one drain at a time (the thread, or shutdown)
        self._thread = threading.Thread(target=self._run, name="taskctl-spans", daemon=True)
        self._thread.start()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self._spans.append(span)  # atomic under the GIL: no lock on the test's path

    def start_logs(self, resource: Any, otlp: SignalExport) -> None:
        """Send OTel log records (:meth:`on_log`) over OTLP too, from the span process."""
        with self._lock:
            if self._sink is None:  # at once: the exporter imports while pytest collects
                self._sink = start_sink(self._path, self._otlp, self._environ)
            self._sink.start_logs(
                (plain_attributes(resource.attributes), resource.schema_url or ""), otlp
            )

    def on_log(self, entry: tuple[Any, ...]) -> None:
        if not self._logs_closed:  # after the last drain there is no one to send it
            self._logs.append(entry)

    def _run(self) -> None:
        while not self._stopped.wait(FILE_SCHEDULE):
            try:
                self._drain()
            except Exception:  # telemetry never takes a test down: the next drain tries again
                log.warning("spans not handed on; trying again", exc_info=True)

    def _drain(self, final: bool = False) -> None:
        with self._lock:
            if self._logs and self._sink is not None:  # started by start_logs
                logs = self._logs
                self._sink.write_logs([logs.popleft() for _ in range(len(logs))])
            spans = self._spans
            record = self._recorder.record
            records = [record(spans.popleft()) for _ in range(len(spans))]
            for test in self._running():
                records += self._recorder.record_running(test)
            if not records:
                return
            if self._sink is None:
                # The last drain of a short run: its spans are written here, at once.
                self._sink = (
                    SpanWriter(self._path, None)
                    if final
                    else start_sink(self._path, None, self._environ)
                )
            resources, self._recorder.new_resources = self._recorder.new_resources, {}
            self._sink.write(resources, records)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._drain()
        return self._sink.flush(timeout_millis / 1000) if self._sink is not None else True

    def shutdown(self, otlp_deadline: float = 1.5) -> None:
        """Write every span left to the file (local: always complete), then stop."""
        if self._stopped.is_set():
            return  # once: the SDK's provider may call it again at exit
        self._stopped.set()
        self._thread.join()
        try:
            self._drain(final=True)
        except Exception:
            log.warning("spans of the run's end not written", exc_info=True)
        self._logs_closed = True
        if self._sink is None:
            self._sink = SpanWriter(self._path, None)
        self._sink.close_file(otlp_deadline)

    def close_sender(self, deadline: float) -> bool:
        """Give OTLP at most ``deadline`` seconds for what is left; never block longer."""
        started = time.monotonic()
        if self._sink is None:
            return True
        finished = self._sink.close_sender(deadline - (time.monotonic() - started))
        if self._sink.dropped:
            log.warning(
                "OTLP: %d spans dropped while the collector was slow (traces.jsonl has them)",
                self._sink.dropped,
            )
        return finished
