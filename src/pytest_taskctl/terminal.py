"""What the run shows on pytest's terminal: header, pause news, end-of-run summary.

Lines go through the terminal reporter, never into a test's captured output
or onto a progress line.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import TYPE_CHECKING

import pytest

from .config import RUN_ID_ENV
from .telemetry.tracing import PLUGIN_THREAD_PREFIXES

if TYPE_CHECKING:
    from .run import TaskRun


def terminal_line(config: pytest.Config, text: str) -> None:
    """A line on the terminal now, even while pytest captures output (pauses are news)."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        # ensure_newline() knows only the verbose layout; with -q the progress
        # dots share a line that it does not see, so ask the writer itself.
        writer = getattr(terminal, "_tw", None)
        if writer is not None and writer.width_of_current_line:
            terminal.write("\n")
        terminal.ensure_newline()
        terminal.write_line(text)


class TerminalNotes:
    """The run's news lines (``TaskRun.notify``), written on a thread where that is safe.

    From a test's thread or pytest's own, a line goes out at once (the gate's
    pause news). From one of the plugin's threads (a watch, the writer) while
    this process runs tests, it waits for the next test's start or the end
    of the run: switching pytest's capture off under a test running on
    another thread would send that test's output to the terminal, or trip
    the capture's state. The xdist controller runs no tests: its lines go out
    at once from any thread.
    """

    def __init__(self, config: pytest.Config, runs_tests: bool) -> None:
        self._config = config
        self._runs_tests = runs_tests
        #: Lines from the plugin's threads, oldest first (appends are atomic).
        self.pending: collections.deque[str] = collections.deque()

    def __call__(self, text: str) -> None:
        if self._runs_tests and threading.current_thread().name.startswith(PLUGIN_THREAD_PREFIXES):
            self.pending.append(text)
            return
        self.flush()
        terminal_line(self._config, text)

    def flush(self) -> None:
        """Write the waiting lines (on a thread where a test may write, or none runs)."""
        while self.pending:
            try:
                text = self.pending.popleft()
            except IndexError:  # another test thread took the last one
                return
            terminal_line(self._config, text)


def header_lines(run: TaskRun) -> list[str]:
    settings = run.settings
    lines = []
    if settings.run_id_generated:
        lines.append(
            f"taskctl: warning: no run id given; run id {settings.run_id} "
            f"(generated: pass --run-id or set {RUN_ID_ENV} to choose one)"
        )
    else:
        lines.append(f"taskctl: run id {settings.run_id}")
    if run.etcd_error:
        lines.append(f"taskctl: warning: {run.etcd_error}; pause/cancel disabled for this run")
    else:
        lines.append(f"taskctl: control via {run.control_description}")
    lines.extend(f"taskctl: warning: {problem}" for problem in settings.export.problems)
    tracer = run.tracer
    traces = str(tracer.traces_path) if tracer and tracer.traces_path else "off"
    export = tracer.export_description if tracer else "off"
    lines.append(f"taskctl: log {run.runlog.path}, traces {traces} ({export})")
    return lines


def summary_lines(run: TaskRun, header_shown: bool = True) -> list[str]:
    """The end of the run; with ``-q`` (no header) also the header's warnings, once."""
    settings = run.settings
    lines = []
    if settings.run_id_generated and not header_shown:
        lines.append(f"taskctl: warning: no run id given; this run is {settings.run_id}")
    if run.etcd_error and not header_shown:
        lines.append(f"taskctl: warning: {run.etcd_error}; pause/cancel were disabled")
    if not header_shown:
        lines.extend(f"taskctl: warning: {problem}" for problem in settings.export.problems)
    if run.stale_flags:
        lines.append(
            f"taskctl: note: cleared {' and '.join(run.stale_flags)} left over from an "
            "earlier attempt"
        )
    if run.control.cancel_seen:
        lines.append(
            f"taskctl: run {settings.run_id} was cancelled through etcd "
            f"({settings.keys.cancelled}); remaining tests were skipped"
        )
    if run.etcd_lost_at is not None:
        lost = time.strftime("%H:%M:%S", time.localtime(run.etcd_lost_at))
        lines.append(
            f"taskctl: warning: etcd connection was lost at {lost}; tests were not affected"
            + ("" if run.writes_landed else ", some status/result writes did not reach etcd")
        )
    lines.append(
        f"taskctl: run {settings.run_id} {run.final_status or 'ended'}; "
        f"log {run.runlog.path}"
        + (f", traces {run.tracer.traces_path}" if run.tracer and run.tracer.traces_path else "")
    )
    return lines
