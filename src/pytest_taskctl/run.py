"""One pytest run as a task: wires settings, etcd, control, tracing and logs.

``plugin.py`` holds the pytest hooks; each delegates here in a line or two.
Features (resume, live pause, groups) plug into the run's life cycle through
the hooks in :mod:`pytest_taskctl.hookspecs`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from .config import RunSettings, redact_argv
from .control import CANCEL_REASON, RunControl
from .etcd.connection import JointConnection
from .etcd.gateway import EtcdGateway, EtcdUnavailable, KeyValue
from .etcd.store import clear_stale_flags
from .etcd.watch import WatchedRange
from .etcd.writer import KeyWriter
from .outcome import Outcomes, TestOutcome
from .ownership import RunOwnership, RunStillRunning, claim_run
from .process import process_identity
from .signals import SigtermInterrupts
from .status import end_status
from .telemetry import traceid
from .telemetry.export import EXPORT_DEADLINE
from .telemetry.logs import RunLog
from .telemetry.tracing import RunningTest, RunTracer

log = logging.getLogger("pytest_taskctl.plugin")


class TaskRun:
    """State and behaviour of the run for the lifetime of one pytest session."""

    def __init__(
        self,
        settings: RunSettings,
        hook: Any,
        *,
        pytest_log_level: int | None = None,
        is_worker: bool = False,
        is_controller: bool = False,
        resume: bool = False,
    ) -> None:
        self.settings = settings
        #: ``--resume``: only the wording of a refusal depends on it here.
        self.resume = resume
        #: ``config.hook``: the run's life cycle hooks reach the features through it.
        self.hook = hook
        #: pytest-xdist: workers run tests (gate, spans, logs); the controller
        #: owns status and meta, counting from the reports workers send.
        self.is_worker = is_worker
        self.is_controller = is_controller
        self.gateway: EtcdGateway | None = None
        self.view: WatchedRange | None = None
        self.writer: KeyWriter | None = None
        #: The run's lease (None without etcd, on xdist workers, or when refused).
        self.ownership: RunOwnership | None = None
        #: The earlier attempt's status word, as this attempt found it.
        self.previous_status: str | None = None
        #: ...and its status key (``None``: not read, e.g. on an xdist worker).
        self._claimed_status: list[KeyValue] | None = None
        self.etcd_error: str | None = None
        self.etcd_lost_at: float | None = None
        self.writes_landed = True
        self.control = RunControl(settings.keys, None, None)
        #: Features' per-test meta fields (``RunControl.add_meta_source``), added in
        #: ``pytest_taskctl_run_starting``: the control they go to is made after it.
        self.meta_sources: list[Callable[[], Mapping[str, Any]]] = []
        #: Per-test observers, called from the plugin's own protocol and report wrappers:
        #: a pluggy hook implementation per feature cost more per test than its work.
        #: Start: with the item and its :class:`RunningTest` once the test's span started,
        #: before its setup (the ``setup`` span opens there).
        self.start_observers: list[Callable[[pytest.Item, RunningTest], None]] = []
        #: End: with the item when its protocol ends, however it ends (an interrupt too).
        self.end_observers: list[Callable[[pytest.Item], None]] = []
        #: Rerun: as start, when a rerun plugin sets the test up again (a new ``setup`` span).
        self.rerun_observers: list[Callable[[pytest.Item, RunningTest], None]] = []
        #: Report: with ``(item, call, report)`` for each phase report.
        self.report_observers: list[
            Callable[[pytest.Item, pytest.CallInfo[None], pytest.TestReport], None]
        ] = []
        self.tracer: RunTracer | None = None
        self.runlog = RunLog(
            settings.run_dir / "pytest.log",
            root_level=settings.log_level,
            handler_level=pytest_log_level or logging.NOTSET,
            export=settings.export,
        )
        self.outcomes = Outcomes()
        self.final_status = ""
        self.signals = SigtermInterrupts()
        self._connection = JointConnection(self._connection_changed)
        self._closed = False
        #: Ctrl-C or ``pytest.exit`` seen by pytest's keyboard-interrupt hook.
        self.keyboard_interrupt = False
        self.stale_flags: list[str] = []
        #: Shows a line on the terminal (set by the plugin); pauses are announced there.
        self.notify: Callable[[str], None] = lambda text: None

    def span_source(self) -> Any:
        """``child_span(name, attributes)`` of the run's tracer once the session started."""
        return None if self.tracer is None else self.tracer.child_span

    def phase_source(self) -> Any:
        """``start_phases(test_span)`` of the run's tracer once the session started."""
        return None if self.tracer is None else self.tracer.start_phases

    def tracer_provider(self) -> Any:
        """The run's own TracerProvider once the session started (None before, or disabled)."""
        return None if self.tracer is None else self.tracer.tracer_provider

    @property
    def interrupted(self) -> bool:
        return self.keyboard_interrupt or bool(self.signals.received)

    @property
    def lost_ownership(self) -> bool:
        """Another process took the run over while ours was stopped: write nothing more."""
        return self.ownership is not None and self.ownership.lost

    # -- session ----------------------------------------------------------------

    def start(self, argv: list[str]) -> None:
        """Take the run id first, then create files and spans; a refused run writes nothing.

        Order matters: connect, own the run (``<run>/lease``; a live owner is a
        usage error, exit 4), and only then the tracer, ``pytest.log``, the
        writer and meta -- so a refused process never touches the live run's
        ``logs/<run_id>/`` files or keys.
        """
        settings = self.settings
        self._connect()
        previous_meta = self._claim()
        self.tracer = RunTracer(
            settings.run_id,
            settings.run_dir / "traces.jsonl",
            per_test_traces=settings.trace_mode == "test",
            failures_on_root=settings.span_detail == "test",
            export=settings.export,
        )
        traceid.activate(self.tracer)
        self.runlog.start(resource=self.tracer.resource, log_sink=self.tracer.span_pipeline)
        self.tracer.start_session(
            {"test.suite.name": "pytest", "host.name": socket.gethostname()},
            joined=settings.xdist_session,
        )
        for problem in settings.export.problems:
            log.warning("%s", problem)
        if settings.run_id_generated:
            log.warning("no run id given; generated run id %s", settings.run_id)
        if self.etcd_error:
            log.warning("%s; pause/cancel disabled for this run", self.etcd_error)
        if self.gateway is not None:
            self.writer = KeyWriter(
                self.gateway,
                on_connection_change=self._connection.callback("writer"),
                fence=self.ownership,
            )
        meta = self._meta(argv)
        try:
            hook = self.hook.pytest_taskctl_run_starting
            for fields in hook(run=self, previous_meta=previous_meta):
                meta.update(fields or {})
        except BaseException:
            self.close("INTERRUPTED")
            raise
        self._watch_flags()
        for source in self.meta_sources:
            self.control.add_meta_source(source)
        self.control.start(meta)
        self.runlog.line(
            logging.INFO,
            "pytest_sessionstart: run %s (%s)",
            settings.run_id,
            self.control_description,
        )
        self.signals.install()

    def _connect(self) -> None:
        """Connect; a failure is told once ``pytest.log`` exists (see :meth:`start`)."""
        try:
            self.gateway = EtcdGateway.connect(self.settings.etcd)
        except EtcdUnavailable as exc:
            self.etcd_error = str(exc)

    def _claim(self) -> dict[str, Any] | None:
        """Own the run id (not on xdist workers: the controller owns it); the previous meta.

        A live owner raises :class:`pytest.UsageError` before anything exists.
        """
        if self.gateway is None or self.is_worker or self.settings.join:
            return None  # --join: the join feature's membership shares the run instead
        try:
            claim = claim_run(self.gateway, self.settings.keys, resume=self.resume)
        except RunStillRunning as exc:
            self._disconnect()
            raise pytest.UsageError(str(exc)) from None  # exit 4, nothing written
        except Exception as exc:  # etcd went away right after connecting
            self._disconnect()
            self.etcd_error = f"etcd unreachable ({exc})"
            return None
        self.ownership = claim.ownership
        self.previous_status = claim.previous_status
        self._claimed_status = claim.status_kvs
        return claim.previous_meta

    def _disconnect(self) -> None:
        if self.gateway is not None:
            self.gateway.close()
            self.gateway = None

    def _watch_flags(self) -> None:
        """Clear flags left by an ended attempt, then mirror the run's flags locally.

        Runs after the start hooks, so a run id still live elsewhere is
        refused before we touch its keys.
        """
        if self.gateway is None:
            return
        keys = self.settings.keys
        start, end = keys.control_range
        taken = self.ownership.revision if self.ownership is not None else None
        try:
            self.stale_flags = clear_stale_flags(self.gateway, keys, taken, self._claimed_status)
            initial = self.gateway.range(start, end)
        except Exception as exc:  # etcd went away right after connecting
            self.etcd_error = f"etcd unreachable ({exc})"
            log.warning("%s; pause/cancel disabled for this run", self.etcd_error)
            return
        if self.stale_flags:
            log.warning(
                "cleared %s left over from an earlier attempt of run %s",
                " and ".join(self.stale_flags),
                self.settings.run_id,
            )
        self.view = WatchedRange(
            self.gateway, start, end, on_connection_change=self._connection.callback("watch")
        ).start(initial)
        self.control = RunControl(
            keys,
            self.view,
            self.writer,
            publish=not (
                self.is_worker or self.settings.join
            ),  # --join: the join feature publishes
            notify=self.notify,
        )

    def _connection_changed(self, connected: bool, error: BaseException | None) -> None:
        """Warn once when etcd is lost (by any part) and once when every part has it back."""
        if not connected:
            if self.etcd_lost_at is None:
                self.etcd_lost_at = time.time()
            log.warning("lost etcd (%s); tests go on, reconnecting in the background", error)
        else:
            log.warning("etcd is back; pause and cancel work again")

    def _meta(self, argv: list[str]) -> dict[str, Any]:
        assert self.tracer is not None
        session = self.tracer.session_context
        return {
            "run_id": self.settings.run_id,
            "started": time.time(),
            **process_identity(),  # host, pid, proc_start: tells a dead run from a live one
            "argv": redact_argv(argv),
            "cwd": os.getcwd(),
            "trace_id": f"{session.trace_id:032x}",
            "traceparent": traceid.format_traceparent(session),
            "log_file": str(self.runlog.path),
            "traces_file": str(self.tracer.traces_path or ""),
        }

    @property
    def control_description(self) -> str:
        if self.etcd_error:
            return "control off: etcd unreachable"
        return f"etcd {self.settings.etcd.describe()}, keys {self.settings.keys.root}/"

    def collection_finished(self, items: list[pytest.Item]) -> None:
        self.control.total = len(items)
        if self.control.is_cancelled():
            log.warning(
                "run cancelled through etcd before it started; skipping %d tests", len(items)
            )
            marker = pytest.mark.skip(reason=CANCEL_REASON)
            for item in items:
                item.add_marker(marker)
        self.control.publish_progress(force=True)

    def end_status(self, session: pytest.Session) -> str:
        """The run's end status, from what happened (:func:`pytest_taskctl.status.end_status`)."""
        cancelled = self.control.cancel_seen or self.control.is_cancelled()
        # A signal whose KeyboardInterrupt was swallowed, or that came during the
        # shutdown, still interrupted the run: exit code and status say so alike.
        ended_by_signal = self.interrupted and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.TESTS_FAILED,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        )
        if cancelled or ended_by_signal:
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        return end_status(
            int(session.exitstatus), cancelled=cancelled, interrupted=self.interrupted
        )

    def finish(self, session: pytest.Session) -> None:
        """Let features finish, decide the end status, write it with the final meta; close."""
        self.signals.shutdown()  # a signal from here on is recorded, not raised into the writes
        self.hook.pytest_taskctl_run_finishing(run=self, session=session)
        status = self.final_status = self.end_status(session)
        counts = self.control.progress()["counts"]
        self.runlog.line(
            logging.INFO,
            "pytest_sessionfinish: run %s %s (exit %d): %s",
            self.settings.run_id,
            status,
            int(session.exitstatus),
            ", ".join(f"{v} {k}" for k, v in counts.items()),
        )
        self.control.finish(status, {"exit_code": int(session.exitstatus)})
        self.close(status, {f"pytest.tests.{k}": v for k, v in counts.items()})

    def close(self, status: str = "INTERRUPTED", attributes: Mapping[str, Any] = {}) -> None:  # noqa: B006 - read only
        """Stop every thread, flush etcd and telemetry, close files: each bounded, once.

        Also registered with ``config.add_cleanup``, so a session that never
        reaches sessionfinish (another plugin's sessionstart raised) leaks nothing.
        """
        if self._closed:
            return
        self._closed = True
        self.control.stop()
        if self.view is not None:
            self.view.stop()
        try:
            self.hook.pytest_taskctl_run_closing(run=self)
        except Exception:
            log.exception("taskctl: a feature failed while the run closed")
        if self.writer is not None:
            self.writes_landed = self.writer.close(timeout=EXPORT_DEADLINE)
            if not self.writes_landed:
                log.warning(
                    "etcd did not take the final status/results within %s s", EXPORT_DEADLINE
                )
        if self.ownership is not None:
            self.ownership.release()  # after the last fenced write
        if self.gateway is not None:
            self.gateway.close()
        # Spans and OTel logs share one deadline.
        deadline = time.monotonic() + EXPORT_DEADLINE
        if self.tracer is not None:
            self.tracer.end_session(status, attributes)
            if not self.tracer.shutdown(deadline - time.monotonic()):
                log.warning(
                    "span export unfinished after %s s; traces.jsonl is complete", EXPORT_DEADLINE
                )
        self.runlog.stop(max(0.0, deadline - time.monotonic()))
        traceid.activate(None)
        self.signals.restore()  # last: a signal during the bounded shutdown above is recorded

    # -- tests ------------------------------------------------------------------

    def record_report(
        self, report: pytest.TestReport, nodeid: str | None = None
    ) -> TestOutcome | None:
        """Fold a phase report into the test's outcome; returns it when an attempt is complete.

        ``nodeid``: the report's, when the caller has it (``report.nodeid`` is a
        property that makes the string again on pytest 9).
        """
        return self.outcomes.record(report, report.nodeid if nodeid is None else nodeid)

    def finish_test(self, nodeid: str) -> TestOutcome:
        """The test is over: count it, and tell ``pytest_taskctl_test_finished`` its last
        attempt's outcome. A test whose attempt never completed (an interrupt) is counted
        as done but not reported: a resumed run runs it again."""
        outcome = self.outcomes.pop(nodeid)
        if outcome is None or not outcome.complete:
            self.control.test_finished(None)
            if outcome is None or outcome.word not in ("failed", "error"):
                return TestOutcome.interrupted()
            return outcome  # a failure before the interrupt is kept
        self.control.test_finished(outcome.counter)
        self.hook.pytest_taskctl_test_finished(run=self, nodeid=nodeid, outcome=outcome)
        return outcome


def argv_of(config: pytest.Config) -> list[str]:
    return [sys.argv[0], *config.invocation_params.args]
