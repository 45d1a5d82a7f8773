"""The span process: encoding and export of a run's spans, outside pytest's process.

Encoding spans and sending them over OTLP is pure-Python work. On a thread of
pytest's process it holds the GIL the tests need, and every hand-over of the
GIL between cores costs the test thread more than the work itself (measured:
``docs/benchmarks.md``). So pytest's process only turns finished spans into
records (:mod:`.span_records`) and writes them, every half second, to a pipe;
this process encodes them, appends them to ``traces.jsonl`` and sends them
over OTLP with the SDK's exporter (gRPC is imported here, not in pytest).

Lifetime: started when the first spans leave while the run goes on -- at
once when OTLP is configured, so gRPC imports while pytest collects; a run
shorter than half a second writes its few spans at its end without a second
interpreter -- in a session of its own (Ctrl-C in the terminal is pytest's
to handle, not ours). It ends when pytest says
``end`` -- after writing the file completely, then giving OTLP a bounded
time -- or when its input closes because pytest died: it then writes what it
got and exits the same way. So a SIGKILLed run loses at most the spans that
had not left pytest's process yet (half a second of them), as before.

The wire: frames of a 4-byte little-endian length and a ``marshal`` payload,
a tuple whose first item names the message. Towards this process:
``("start", traces_path, otlp_settings)``, ``("spans", resources, records)``,
``("logs_start", resource, otlp_settings)``, ``("logs", records)`` (OTel log
records, :mod:`.log_forwarding`), ``("flush", n)``, ``("end", otlp_deadline)``.
Back: ``("flushed", n)``, ``("file_done",)``, ``("done", dropped, finished)`` and
``("log", level, logger, message)`` for warnings of the exporter, which pytest's
process logs as its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import marshal
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .export import SignalExport
from .log_forwarding import FROM_SPAN_PROCESS
from .span_records import plain_attributes
from .span_writer import SpanWriter

log = logging.getLogger("pytest_taskctl.plugin")

_LENGTH = struct.Struct("<I")
#: How long pytest waits for the file to be complete at the end (local work only).
FILE_DEADLINE = 5.0
#: Pipe buffer asked of the kernel: a slow moment of this process must not block pytest's.
PIPE_SIZE = 1 << 20
#: A span process that takes nothing from a full pipe for this long is wedged: it is
#: killed and pytest's process does the work (telemetry fails open, it never hangs a run).
WRITE_DEADLINE = 2.0


def frame(payload: bytes) -> bytes:
    """A frame: the payload's length, then the payload."""
    return _LENGTH.pack(len(payload)) + payload


def write_frame(stream: IO[bytes], message: tuple[Any, ...]) -> None:
    stream.write(frame(marshal.dumps(message)))
    stream.flush()


def read_frame(stream: IO[bytes]) -> tuple[Any, ...] | None:
    """The next message, or None at the end of the stream (the other side is gone)."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    message: tuple[Any, ...] = marshal.loads(payload)
    return message


def _plain_parts(attributes: Any, events: Any) -> tuple[dict[str, Any], list[Any]]:
    return plain_attributes(attributes), [(n, plain_attributes(a), t) for n, a, t in events]


def _plain_records(records: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Records whose attributes marshal can carry (a suite set an object as a value)."""
    out = []
    for record in records:
        fields = list(record)
        fields[9], fields[10] = _plain_parts(record[9], record[10])
        fields[16] = [(*c[:5], *_plain_parts(c[5], c[6]), *c[7:]) for c in record[16]]
        out.append(tuple(fields))
    return out


class ProcessSink:
    """pytest's end of the pipe: the same methods as :class:`SpanWriter`."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._lock = threading.Lock()
        self._flushed = threading.Condition()
        self._flush_count = 0
        self._acked = 0
        self._file_done = threading.Event()
        self._done = threading.Event()
        self.dropped = 0
        self._finished = False
        #: Set when the process died: records then go to this in-process writer.
        self._fallback: SpanWriter | None = None
        self._fallback_args: tuple[Path | None, SignalExport | None] = (None, None)
        self._resources: dict[int, Sequence[Any]] = {}
        self._logs_start: tuple[Sequence[Any], SignalExport] | None = None
        self._closed = False
        self._reader = threading.Thread(
            target=self._read, args=(process.stdout,), name="taskctl-span-replies", daemon=True
        )
        self._reader.start()

    @classmethod
    def start(
        cls, path: Path | None, otlp: SignalExport | None, environ: Mapping[str, str]
    ) -> ProcessSink:
        """Start the span process; ``OSError`` when it cannot be started.

        ``environ``: the environment as the session started (a test that
        monkeypatches ``os.environ`` must not decide the span process's).
        """
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        # -P (3.11+): the working directory's modules must not shadow what it imports.
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []
        process = subprocess.Popen(
            [sys.executable, *safe_path, "-m", "pytest_taskctl.telemetry.span_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # Ctrl-C is pytest's; we end when it closes our input
        )
        assert process.stdin is not None
        with contextlib.suppress(OSError, AttributeError):
            import fcntl

            fcntl.fcntl(process.stdin, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(process.stdin.fileno(), False)  # writes wait at most WRITE_DEADLINE
        sink = cls(process)
        sink._fallback_args = (path, otlp)
        otlp_fields = dataclasses.astuple(otlp) if otlp is not None else None
        sink._send(("start", str(path) if path is not None else None, otlp_fields))
        return sink

    # -- pytest's side ------------------------------------------------------------

    def _send(self, message: tuple[Any, ...]) -> bool:
        """False when the span process is gone (the caller then writes here)."""
        try:
            payload = marshal.dumps(message)
        except ValueError:  # an attribute value marshal cannot carry
            if message[0] != "spans":
                log.warning("telemetry message %r dropped: a value cannot be sent", message[0])
                return True
            payload = marshal.dumps((message[0], message[1], _plain_records(message[2])))
        with self._lock:
            if self._fallback is not None:
                return False
            if self._closed:
                return True  # the run is over: nothing more leaves
            try:
                self._write_all(frame(payload))
                return True
            except (OSError, ValueError):  # BrokenPipeError, TimeoutError; ValueError: closed
                self._process.kill()  # wedged or gone: its output ends, its reader too
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(1.0)  # no half-written line under the fallback's
                self._start_fallback()
                return False

    def _write_all(self, data: bytes) -> None:
        """Write to the pipe, waiting for room at most ``WRITE_DEADLINE`` in all."""
        fd = self._stdin.fileno()
        view = memoryview(data)
        deadline = time.monotonic() + WRITE_DEADLINE
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the span process took nothing") from None
                select.select([], [fd], [], remaining)

    def _start_fallback(self) -> None:
        path, otlp = self._fallback_args
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()  # broken: a suite run with -W error must not see it unclosed
        log.warning("span process ended early; encoding spans in pytest's process")
        self._fallback = SpanWriter(path, otlp.make_encoded_span_exporter if otlp else None)
        self._fallback.write(self._resources, [])
        if self._logs_start is not None:
            resource, logs_otlp = self._logs_start
            self._fallback.start_logs(resource, logs_otlp)

    def start_logs(self, resource: Sequence[Any], otlp: SignalExport) -> None:
        self._logs_start = (resource, otlp)
        if not self._send(("logs_start", tuple(resource), dataclasses.astuple(otlp))):
            assert self._fallback is not None
            self._fallback.start_logs(resource, otlp)

    def write_logs(self, entries: Sequence[Sequence[Any]]) -> None:
        if not self._send(("logs", list(entries))):
            assert self._fallback is not None
            self._fallback.write_logs(entries)

    def write(
        self, resources: Mapping[int, Sequence[Any]], records: Sequence[tuple[Any, ...]]
    ) -> None:
        self._resources.update(resources)
        if not self._send(("spans", dict(resources), list(records))):
            assert self._fallback is not None
            self._fallback.write(resources, records)

    def flush(self, timeout: float) -> bool:
        """True once the span process wrote everything sent so far."""
        with self._flushed:
            self._flush_count += 1
            token = self._flush_count
        if not self._send(("flush", token)):
            return True  # the fallback writes synchronously
        with self._flushed:  # a span process that dies answers nothing more: stop waiting
            self._flushed.wait_for(lambda: self._acked >= token or self._done.is_set(), timeout)
            return self._acked >= token

    def close_file(self, otlp_deadline: float) -> None:
        """Ask for the end; wait until ``traces.jsonl`` is complete (local work only)."""
        if self._closed:
            return
        sent = self._send(("end", otlp_deadline))
        self._closed = True
        if sent:
            with contextlib.suppress(OSError):
                self._stdin.close()
            if not self._file_done.wait(FILE_DEADLINE):
                log.warning("span process did not finish traces.jsonl in %s s", FILE_DEADLINE)
        if self._fallback is not None:
            self._fallback.close_file()

    def close_sender(self, deadline: float) -> bool:
        """Wait at most ``deadline`` for OTLP; the span process is killed after that."""
        finished = self._done.wait(max(0.0, deadline)) and self._finished
        if self._process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(0.2 if finished else 0.0)
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()
        self._reader.join(1.0)  # the process is gone: its output ends
        if self._fallback is not None:  # what the dead process had is lost; the rest is here
            finished = self._fallback.close_sender(max(0.0, deadline))
            self.dropped += self._fallback.dropped
        return finished

    def _read(self, stdout: IO[bytes]) -> None:
        """The span process's replies (a thread that sleeps in ``read``)."""
        try:
            while (message := read_frame(stdout)) is not None:
                kind = message[0]
                if kind == "flushed":
                    with self._flushed:
                        self._acked = max(self._acked, message[1])
                        self._flushed.notify_all()
                elif kind == "file_done":
                    self._file_done.set()
                elif kind == "done":
                    self.dropped += message[1]
                    self._finished = bool(message[2])
                    self._done.set()
                elif kind == "log":
                    logging.getLogger(message[2]).log(
                        message[1], "%s", message[3], extra={FROM_SPAN_PROCESS: True}
                    )
        except Exception:  # garbled output: the process is as good as gone
            log.warning("unreadable answer from the span process", exc_info=True)
        finally:
            stdout.close()  # a suite run with -W error must not see our ResourceWarning
            self._file_done.set()  # gone: nothing more will come
            self._done.set()
            with self._flushed:
                self._flushed.notify_all()


# -- the span process -------------------------------------------------------------------


class _ReplyLogs(logging.Handler):
    """Warnings of the exporter go back to pytest's process, which logs them."""

    def __init__(self, reply: Any) -> None:
        super().__init__(logging.WARNING)
        self._reply = reply

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self._reply(("log", record.levelno, record.name, record.getMessage()))


def main() -> int:
    stdin = sys.stdin.buffer
    # The answers get a descriptor of their own; fd 1 becomes stderr, so a stray
    # print (an exporter's, a warning's) cannot garble the frames pytest reads.
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    reply_lock = threading.Lock()

    def reply(message: tuple[Any, ...]) -> None:
        with reply_lock, contextlib.suppress(OSError, ValueError):
            write_frame(stdout, message)

    logging.getLogger().addHandler(_ReplyLogs(reply))
    start = read_frame(stdin)
    if start is None or start[0] != "start":
        return 2
    _, path, otlp_fields = start
    make_exporter = SignalExport(*otlp_fields).make_encoded_span_exporter if otlp_fields else None
    writer = SpanWriter(Path(path) if path else None, make_exporter)
    otlp_deadline = 1.5  # pytest died without saying: export.EXPORT_DEADLINE
    while (message := read_frame(stdin)) is not None:
        kind = message[0]
        if kind == "spans":
            writer.write(message[1], message[2])
        elif kind == "logs":
            writer.write_logs(message[1])
        elif kind == "logs_start":
            writer.start_logs(message[1], SignalExport(*message[2]))
        elif kind == "flush":
            reply(("flushed", message[1]))
        elif kind == "end":
            otlp_deadline = message[1]
            break
    writer.close_file()
    reply(("file_done",))
    finished = writer.close_sender(otlp_deadline)
    reply(("done", writer.dropped, finished))
    return 0


if __name__ == "__main__":
    code = main()
    # Not sys.exit: an exporter thread still waiting for a dead collector must not
    # hold the interpreter's shutdown; everything that matters is written.
    os._exit(code)
