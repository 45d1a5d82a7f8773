"""Output and log capture per thread: each test gets what it printed and logged itself."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import pytest
from _pytest.capture import CaptureIO, CaptureResult, TeeCaptureIO
from _pytest.logging import LogCaptureHandler


class _ThreadStream:
    """``sys.stdout``/``sys.stderr`` under ``--thread``: a test's writes go to its own buffer.

    Writes from threads not capturing a test (the main thread, threads a test
    started) go to the stream that was there before.
    """

    def __init__(self, capture: ThreadCapture, name: str, original: TextIO) -> None:
        self._capture = capture
        self._name = name
        self._original = original

    def _target(self) -> TextIO:
        buffer = self._capture.buffer(self._name)
        return self._original if buffer is None else buffer

    def write(self, text: str) -> int:
        return self._target().write(text)

    def writelines(self, lines: Iterable[str]) -> None:
        target = self._target()
        for line in lines:
            target.write(line)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)


class ThreadCapture:
    """Stands in for pytest's global capture (``CaptureManager._global_capturing``).

    pytest swaps ``sys.stdout`` and file descriptors 1 and 2 for the whole
    process around each test phase and reads what accumulated: with tests on
    several threads, output would land in whichever test reads first. This
    object has the same methods, but per thread: ``resume``/``suspend``
    switch the calling thread's capture, ``readouterr`` returns the calling
    thread's text. Capture is at the ``sys`` level (like ``--capture=sys``);
    output written straight to file descriptors 1/2 (subprocesses, C code)
    goes to the terminal.
    """

    def __init__(self, tee: bool = False) -> None:
        self._tee = tee
        self._local = threading.local()
        self._saved: tuple[TextIO, TextIO] | None = None

    def buffer(self, name: str) -> TextIO | None:
        if not getattr(self._local, "active", False):
            return None
        return getattr(self._local, name)  # type: ignore[no-any-return]

    def start_capturing(self) -> None:
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _ThreadStream(self, "out", sys.stdout)
        sys.stderr = _ThreadStream(self, "err", sys.stderr)

    def stop_capturing(self) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None

    def _new_buffers(self) -> None:
        if self._tee and self._saved is not None:
            self._local.out, self._local.err = (TeeCaptureIO(s) for s in self._saved)
        else:
            self._local.out, self._local.err = CaptureIO(), CaptureIO()

    def resume_capturing(self) -> None:
        if getattr(self._local, "out", None) is None:
            self._new_buffers()
        self._local.active = True

    def suspend_capturing(self, in_: bool = False) -> None:
        self._local.active = False

    def is_started(self) -> bool:
        return bool(getattr(self._local, "active", False))

    def readouterr(self) -> CaptureResult[str]:
        out = getattr(self._local, "out", None)
        err = getattr(self._local, "err", None)
        result = CaptureResult(
            out.getvalue() if out is not None else "", err.getvalue() if err is not None else ""
        )
        self._new_buffers()
        return result

    def pop_outerr_to_orig(self) -> tuple[str, str]:
        out, err = self.readouterr()
        if self._saved is not None:
            if out:
                self._saved[0].write(out)
            if err:
                self._saved[1].write(err)
        return out, err


@contextlib.contextmanager
def capture_per_thread(config: pytest.Config) -> Iterator[None]:
    """Install :class:`ThreadCapture` in pytest's capture manager (unless ``-s``)."""
    capman: Any = config.pluginmanager.getplugin("capturemanager")
    original = getattr(capman, "_global_capturing", None)
    if original is None:  # -s: output goes straight to the terminal
        yield
        return
    capman.suspend_global_capture(in_=False)
    capture = ThreadCapture(tee=capman._method == "tee-sys")
    capture.start_capturing()
    capman._global_capturing = capture
    try:
        yield
    finally:
        capture.stop_capturing()
        if capman._global_capturing is capture:
            capman._global_capturing = original


class ThreadLogCaptureHandler(LogCaptureHandler):
    """pytest's log capture handler, taking only records logged on the thread that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.owner = threading.get_ident()

    def handle(self, record: logging.LogRecord) -> bool:
        if threading.get_ident() != self.owner:
            return False
        return bool(super().handle(record))


@contextlib.contextmanager
def log_capture_per_thread(config: pytest.Config) -> Iterator[None]:
    """Give each thread its own ``caplog`` and log-report handlers in pytest's logging plugin.

    The plugin attaches its two handlers to the root logger around each test
    phase, resets them, and removes them after: shared by threads, one test
    would clear or detach another's. Its class is swapped for the loop to a
    subclass whose ``caplog_handler``/``report_handler`` are per thread.
    """
    plugin: Any = config.pluginmanager.get_plugin("logging-plugin")
    if plugin is None:
        yield
        return
    base = type(plugin)
    local = threading.local()

    def per_thread(name: str) -> property:
        template = getattr(plugin, name)

        def handler(self: object) -> LogCaptureHandler:
            made = getattr(local, name, None)
            if made is None:
                made = ThreadLogCaptureHandler()
                made.setFormatter(template.formatter)
                made.setLevel(template.level)
                setattr(local, name, made)
            return made

        return property(handler)

    root = logging.getLogger()
    saved_level = root.level
    if plugin.log_level is not None:
        # Each phase lowers and restores the root level; from several threads
        # a restore would undo another test's. Lowered once, it stays put.
        root.setLevel(min(saved_level, plugin.log_level))
    plugin.__class__ = type(
        base.__name__,
        (base,),
        {
            "caplog_handler": per_thread("caplog_handler"),
            "report_handler": per_thread("report_handler"),
        },
    )
    try:
        yield
    finally:
        plugin.__class__ = base
        root.setLevel(saved_level)
