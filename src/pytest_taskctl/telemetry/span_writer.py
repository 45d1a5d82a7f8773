"""Where span records end up: ``traces.jsonl`` at once, OTLP on a thread of its own.

A :class:`SpanWriter` encodes records once (:mod:`.encode`), appends the
OTLP/JSON line to ``traces.jsonl`` and hands the protobuf bytes to an
:class:`OtlpSender`. The sender may block on a slow or absent collector;
the file never waits for it. It runs in the span process
(:mod:`.span_process`), or in pytest's own process when that process could
not be started.

The OTLP exporters are the SDK's own (headers, TLS, compression, retries),
fed the pre-encoded request instead of spans.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from opentelemetry import context as otel_context

from .encode import encode_request
from .export import SignalExport
from .log_forwarding import LogExport
from .span_records import ResourceRecord, SpanRecord

#: Spans per request (a test's record carries its phases and fixtures): keeps a
#: request well under collectors' 4 MiB default limit.
MAX_BATCH = 512
#: Encoded requests waiting for a slow collector before new ones are dropped.
MAX_PENDING_REQUESTS = 256


def _batches(records: Sequence[Sequence[Any]]) -> Iterator[tuple[list[SpanRecord], int]]:
    """``records`` as requests of at most :data:`MAX_BATCH` spans (a record with more
    children goes alone), with the number of spans in each."""
    batch: list[SpanRecord] = []
    spans = 0
    for plain in records:
        record = SpanRecord._make(plain)
        size = 1 + len(record.children)
        if batch and spans + size > MAX_BATCH:
            yield batch, spans
            batch, spans = [], 0
        batch.append(record)
        spans += size
    if batch:
        yield batch, spans


class EncodedSpans:
    """A pre-encoded ``ExportTraceServiceRequest`` and the number of spans in it."""

    __slots__ = ("count", "payload")

    def __init__(self, payload: bytes, count: int) -> None:
        self.payload = payload
        self.count = count


def _suppressed() -> object:
    """Our own export traffic must not become spans (``--taskctl-http`` in this process)."""
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

    return otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))


class OtlpSender:
    """Sends encoded requests with an SDK exporter, on a thread of its own."""

    def __init__(self, make_exporter: Callable[[], Any]) -> None:
        self._make_exporter = make_exporter
        self._queue: collections.deque[EncodedSpans | None] = collections.deque()
        self._wake = threading.Event()
        self.dropped = 0
        self.exporter: Any = None
        self._thread = threading.Thread(target=self._run, name="taskctl-otlp", daemon=True)
        self._thread.start()

    def send(self, encoded: EncodedSpans) -> None:
        if len(self._queue) >= MAX_PENDING_REQUESTS:
            self.dropped += encoded.count
            return
        self._queue.append(encoded)
        self._wake.set()

    def _run(self) -> None:
        _suppressed()
        # Importing and building the exporter (grpc is heavy) happens here, while
        # pytest collects: not on the session's start-up path.
        self.exporter = self._make_exporter()
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._queue:
                encoded = self._queue.popleft()
                if encoded is None:
                    return
                with contextlib.suppress(Exception):  # the exporter logs its own failures
                    self.exporter.export(encoded)

    def close(self, deadline: float) -> bool:
        """Send what is queued within ``deadline`` seconds; True if all of it left."""
        self._queue.append(None)
        self._wake.set()
        self._thread.join(max(0.0, deadline))
        finished = not self._thread.is_alive()
        if finished and self.exporter is not None:
            with contextlib.suppress(Exception):
                self.exporter.shutdown()
        return finished


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as file:
        if file.seek(0, 2) == 0:
            return False
        file.seek(-1, 2)
        return file.read(1) != b"\n"


class SpanWriter:
    """Encodes records and writes them to ``traces.jsonl`` and an :class:`OtlpSender`."""

    def __init__(self, path: Path | None, make_exporter: Callable[[], Any] | None) -> None:
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close_file
            if _ends_mid_line(path):  # a span process killed while it wrote: a line of our own
                self._file.write("\n")
        self._sender = OtlpSender(make_exporter) if make_exporter is not None else None
        self._logs: LogExport | None = None
        self._resources: dict[int, ResourceRecord] = {}
        self._lock = threading.Lock()  # in pytest's process: the drain thread and shutdown

    @property
    def dropped(self) -> int:
        return self._sender.dropped if self._sender is not None else 0

    def write(
        self, resources: Mapping[int, Sequence[Any]], records: Sequence[Sequence[Any]]
    ) -> None:
        """Encode and write ``records`` (plain tuples in :class:`SpanRecord` order)."""
        with self._lock:
            for key, resource in resources.items():
                self._resources[key] = ResourceRecord(*resource)
            protobuf = self._sender is not None
            for batch, spans in _batches(records):
                line, payload = encode_request(batch, self._resources, protobuf=protobuf)
                if self._file is not None:
                    self._file.write(line)
                if self._sender is not None:
                    self._sender.send(EncodedSpans(payload, spans))
            if self._file is not None:
                self._file.flush()

    def start_logs(self, resource: Sequence[Any], otlp: SignalExport) -> None:
        """OTel log records go to OTLP too (:mod:`.log_forwarding`)."""
        self._logs = LogExport(resource, otlp.make_exporter)

    def write_logs(self, entries: Sequence[Sequence[Any]]) -> None:
        if self._logs is not None and entries:
            self._logs.write(entries)

    def flush(self, timeout: float) -> bool:
        return True  # written when given

    def close_file(self, otlp_deadline: float = 0.0) -> None:
        """Close ``traces.jsonl`` (``otlp_deadline``: for :meth:`close_sender`'s caller)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def close_sender(self, deadline: float) -> bool:
        """Give OTLP (spans and logs, side by side) at most ``deadline`` seconds for what
        is left; True if all of it left."""
        logs_done: threading.Thread | None = None
        if self._logs is not None:
            logs_done = threading.Thread(target=self._logs.shutdown, name="taskctl-logs-flush",
                                         daemon=True)  # fmt: skip
            logs_done.start()
        started = time.monotonic()
        finished = self._sender.close(deadline) if self._sender is not None else True
        if logs_done is not None:
            logs_done.join(max(0.0, deadline - (time.monotonic() - started)))
            finished = finished and not logs_done.is_alive()
        return finished
