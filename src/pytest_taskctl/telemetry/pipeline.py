"""The span pipeline: one queue, one encoding, two destinations.

The SDK's way -- a ``BatchSpanProcessor`` per destination, each exporter
walking every span again -- cost more than the tests it measured. Here a
finished span is appended to a deque (the only work on the test's thread);
a writer thread wakes every half second, encodes what arrived once
(:mod:`.encode`), appends the OTLP/JSON line to ``traces.jsonl`` and hands
the protobuf bytes to a sender thread for OTLP. The sender may block on a
slow or absent collector; the file never waits for it, so a SIGKILL loses at
most the last half second of spans whatever the network does.

The OTLP exporters are the SDK's own (headers, TLS, compression, retries),
fed the pre-encoded request instead of spans.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from .encode import encode_request

log = logging.getLogger("pytest_taskctl.plugin")

#: How often spans are written to traces.jsonl (s): the most a SIGKILL can lose.
FILE_SCHEDULE = 0.5
#: Spans per request: keeps a request well under collectors' 4 MiB default limit.
MAX_BATCH = 512
#: Encoded requests waiting for a slow collector before new ones are dropped.
MAX_PENDING_REQUESTS = 256


class EncodedSpans:
    """A pre-encoded ``ExportTraceServiceRequest`` and the number of spans in it."""

    __slots__ = ("count", "payload")

    def __init__(self, payload: bytes, count: int) -> None:
        self.payload = payload
        self.count = count


def _suppressed() -> object:
    """Our own export traffic must not become spans (``--taskctl-http``)."""
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


class SpanPipeline(SpanProcessor):
    """A span processor that writes ``traces.jsonl`` and feeds an :class:`OtlpSender`."""

    def __init__(self, path: Path | None, sender: OtlpSender | None) -> None:
        self._spans: collections.deque[ReadableSpan] = collections.deque()
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in shutdown
        self._sender = sender
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # one drain at a time (the thread, or shutdown)
        self._thread = threading.Thread(target=self._run, name="taskctl-spans", daemon=True)
        self._thread.start()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self._spans.append(span)  # atomic under the GIL: no lock on the test's path

    def _run(self) -> None:
        while not self._stopped.wait(FILE_SCHEDULE):
            self._drain()

    def _drain(self) -> None:
        with self._lock:
            spans = self._spans
            while spans:
                batch = [spans.popleft() for _ in range(min(len(spans), MAX_BATCH))]
                line, payload = encode_request(batch, protobuf=self._sender is not None)
                if self._file is not None:
                    self._file.write(line)
                if self._sender is not None:
                    self._sender.send(EncodedSpans(payload, len(batch)))
            if self._file is not None:
                self._file.flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._drain()
        return True

    def shutdown(self) -> None:
        """Write every span left to the file (local: always complete), then stop."""
        self._stopped.set()
        self._thread.join()
        self._drain()
        if self._file is not None:
            self._file.close()
            self._file = None

    def close_sender(self, deadline: float) -> bool:
        """Give OTLP at most ``deadline`` seconds for what is left; never block longer."""
        started = time.monotonic()
        if self._sender is None:
            return True
        finished = self._sender.close(deadline - (time.monotonic() - started))
        if self._sender.dropped:
            log.warning(
                "OTLP: %d spans dropped while the collector was slow (traces.jsonl has them)",
                self._sender.dropped,
            )
        return finished
