"""One pytest run as a task: wires settings, store, control, tracing and logs.

``plugin.py`` holds the pytest hooks; each delegates here in a line or two.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from .control import CANCEL_REASON, RunControl
from .etcd.gateway import EtcdGateway, EtcdUnavailable
from .etcd.settings import EtcdSettings, SettingError, resolve_prefix
from .etcd.store import clear_stale_flags
from .etcd.watch import WatchedRange
from .etcd.writer import KeyWriter
from .keys import InvalidRunId, RunKeys, validate_run_id
from .outcome import TestOutcome
from .process import process_identity
from .telemetry import tracing
from .telemetry.logs import RunLog, parse_level
from .telemetry.tracing import (
    EXPORT_DEADLINE,
    ExportConfig,
    InvalidExportConfig,
    RunTracer,
    format_traceparent,
    make_resource,
)

log = logging.getLogger("pytest_taskctl.plugin")

RUN_ID_ENV = "PYTEST_RUN_ID"
WORKER_RUN_ID = "taskctl_run_id"
TRACE_MODES = ("test", "session")
SECRET_WORDS = re.compile(r"(password|passwd|secret|token|api[-_]?key)", re.IGNORECASE)

#: Final status for each pytest exit code (a seen cancel flag wins over all).
EXIT_STATUS = {
    pytest.ExitCode.OK: "COMPLETED",
    pytest.ExitCode.NO_TESTS_COLLECTED: "COMPLETED",
    pytest.ExitCode.TESTS_FAILED: "FAILED",
    pytest.ExitCode.INTERRUPTED: "INTERRUPTED",
    pytest.ExitCode.INTERNAL_ERROR: "INTERRUPTED",
    pytest.ExitCode.USAGE_ERROR: "INTERRUPTED",
}


def generate_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def redact_argv(argv: list[str]) -> list[str]:
    """argv for the meta record: credentials become ``***``."""
    redacted: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            user, sep, _ = arg.partition(":")
            redacted.append(f"{user}:***" if sep else "***")
            hide_next = False
            continue
        name, eq, value = arg.partition("=")
        if name in ("--taskctl-etcd-user",) or SECRET_WORDS.search(name):
            if eq:
                user, sep, _ = value.partition(":")
                redacted.append(f"{name}={user}:***" if sep and "user" in name else f"{name}=***")
            else:
                redacted.append(arg)
                hide_next = True
            continue
        redacted.append(re.sub(r"(://[^/:@\s]+):[^@/\s]+@", r"\1:***@", arg))
    return redacted


@dataclass(frozen=True)
class RunSettings:
    """Everything the run needs from options, ini and environment, validated once."""

    run_id: str
    run_id_generated: bool
    etcd: EtcdSettings
    prefix: str
    log_dir: Path
    log_level: int
    trace_mode: str

    @property
    def keys(self) -> RunKeys:
        return RunKeys(self.prefix, self.run_id)

    @property
    def run_dir(self) -> Path:
        return self.log_dir / self.run_id

    @classmethod
    def from_config(cls, config: pytest.Config) -> RunSettings:
        """Read and validate; any bad value is a :class:`pytest.UsageError`."""
        option = config.option
        environ = os.environ
        raw_id = option.taskctl_run_id
        source = "--run-id"
        workerinput = getattr(config, "workerinput", {})
        if WORKER_RUN_ID in workerinput:  # an xdist worker: the controller's (maybe generated) id
            raw_id, source = workerinput[WORKER_RUN_ID], "the xdist controller"
        if raw_id is None and RUN_ID_ENV in environ:
            raw_id, source = environ[RUN_ID_ENV], f"{RUN_ID_ENV} environment variable"
        generated = raw_id is None and not workerinput
        try:
            run_id = generate_run_id() if raw_id is None else validate_run_id(raw_id)
            etcd = EtcdSettings.resolve(
                endpoints=option.taskctl_etcd,
                cacert=option.taskctl_etcd_cacert,
                cert=option.taskctl_etcd_cert,
                key=option.taskctl_etcd_key,
                user=option.taskctl_etcd_user,
            )
            level_text = option.taskctl_log_level or config.getini("taskctl_log_level") or "INFO"
            level = parse_level(level_text, "--taskctl-log-level / taskctl_log_level")
        except InvalidRunId as exc:
            raise pytest.UsageError(f"{exc} (from {source})") from None
        except (SettingError, ValueError) as exc:
            raise pytest.UsageError(str(exc)) from None
        trace_mode = option.taskctl_trace_mode or config.getini("taskctl_trace_mode") or "test"
        if trace_mode not in TRACE_MODES:
            raise pytest.UsageError(
                f"invalid taskctl_trace_mode {trace_mode!r}: use 'test' or 'session'"
            )
        try:
            ExportConfig.from_environ(environ).validate()
        except InvalidExportConfig as exc:
            raise pytest.UsageError(str(exc)) from None
        log_dir = Path(option.taskctl_log_dir or config.getini("taskctl_log_dir") or "logs")
        if not log_dir.is_absolute():
            log_dir = config.invocation_params.dir / log_dir
        return cls(
            run_id=run_id,
            run_id_generated=generated,
            etcd=etcd,
            prefix=resolve_prefix(option.taskctl_prefix),
            log_dir=log_dir,
            log_level=level,
            trace_mode=trace_mode,
        )


class TaskRun:
    """State and behaviour of the run for the lifetime of one pytest session."""

    def __init__(
        self, settings: RunSettings, *, is_worker: bool = False, is_controller: bool = False
    ) -> None:
        self.settings = settings
        #: pytest-xdist: workers run tests (gate, spans, logs); the controller
        #: owns status and meta, counting from the reports workers send.
        self.is_worker = is_worker
        self.is_controller = is_controller
        self.gateway: EtcdGateway | None = None
        self.view: WatchedRange | None = None
        self.writer: KeyWriter | None = None
        self.etcd_error: str | None = None
        self.etcd_lost_at: float | None = None
        self.writes_landed = True
        self.control = RunControl(settings.keys, None, None)
        self.tracer: RunTracer | None = None
        self.runlog = RunLog(settings.run_dir / "pytest.log", settings.log_level)
        self.outcomes: dict[str, TestOutcome] = {}
        self.final_status = ""
        self._saved_sigterm: Any = None
        self._lost_lock = threading.Lock()
        self._lost_parts: set[str] = set()
        self._closed = False
        self.interrupted = False
        self.stale_flags: list[str] = []
        #: Shows a line on the terminal (set by the plugin); pauses are announced there.
        self.notify: Callable[[str], None] = lambda text: None
        #: Called in start() after connecting, before anything is written to etcd;
        #: each may add fields to the meta record or raise (e.g. UsageError) to refuse the run.
        self.start_hooks: list[Callable[[TaskRun], Mapping[str, Any] | None]] = []
        #: Called in finish() after the last writes landed, while the gateway is still open.
        self.close_hooks: list[Callable[[TaskRun], None]] = []
        #: Called with ``(nodeid, outcome)`` once a test's teardown report is in.
        self.finished_hooks: list[Callable[[str, TestOutcome], None]] = []

    # -- session ----------------------------------------------------------------

    def start(self, argv: list[str]) -> None:
        settings = self.settings
        self.tracer = RunTracer(
            settings.run_id,
            settings.run_dir / "traces.jsonl",
            per_test_traces=settings.trace_mode == "test",
        )
        tracing.activate(self.tracer)
        self.runlog.start(resource=make_resource())
        self.tracer.start_session({"test.suite.name": "pytest", "host.name": socket.gethostname()})
        if settings.run_id_generated:
            log.warning("no run id given; generated run id %s", settings.run_id)
        self._connect()
        meta = self._meta(argv)
        try:
            for hook in self.start_hooks:
                meta.update(hook(self) or {})
        except BaseException:
            self.close("INTERRUPTED")
            raise
        self._watch_flags()
        self.control.start(meta)
        log.info("pytest_sessionstart: run %s (%s)", settings.run_id, self.control_description)
        self._install_sigterm()

    def _connect(self) -> None:
        try:
            self.gateway = EtcdGateway.connect(self.settings.etcd)
        except EtcdUnavailable as exc:
            self.etcd_error = str(exc)
            log.warning("%s; pause/cancel disabled for this run", exc)
            return
        self.writer = KeyWriter(
            self.gateway, on_connection_change=self._connection_callback("writer")
        )

    def _watch_flags(self) -> None:
        """Clear flags left by an ended attempt, then mirror the run's flags locally.

        Runs after the start hooks, so a run id still live elsewhere (resume's
        lease) is refused before we touch its keys.
        """
        if self.gateway is None:
            return
        keys = self.settings.keys
        start, end = keys.control_range
        try:
            self.stale_flags = clear_stale_flags(self.gateway, keys)
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
            self.gateway, start, end, on_connection_change=self._connection_callback("watch")
        ).start(initial)
        self.control = RunControl(
            keys, self.view, self.writer, publish=not self.is_worker, notify=self.notify
        )

    def _connection_callback(self, part: str) -> Callable[[bool, BaseException | None], None]:
        """Warn once when etcd is lost (by any part) and once when every part has it back."""

        def changed(connected: bool, error: BaseException | None) -> None:
            with self._lost_lock:
                was_lost = bool(self._lost_parts)
                if connected:
                    self._lost_parts.discard(part)
                else:
                    self._lost_parts.add(part)
                if self._lost_parts and not was_lost:
                    if self.etcd_lost_at is None:
                        self.etcd_lost_at = time.time()
                    log.warning(
                        "lost etcd (%s); tests go on, reconnecting in the background", error
                    )
                elif was_lost and not self._lost_parts:
                    log.warning("etcd is back; pause and cancel work again")

        return changed

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
            "traceparent": format_traceparent(session),
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
        """CANCELLED (flag seen), INTERRUPTED (Ctrl-C, SIGTERM, crash), COMPLETED or FAILED."""
        if self.is_controller:
            self.control.is_cancelled()  # the workers saw the flag; the controller looks now
        if self.control.cancel_seen:
            session.exitstatus = pytest.ExitCode.INTERRUPTED
            return "CANCELLED"
        if self.interrupted or session.exitstatus == pytest.ExitCode.INTERNAL_ERROR:
            return "INTERRUPTED"
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            return "COMPLETED"
        return "FAILED"  # failures, errors, collection errors

    def finish(self, session: pytest.Session) -> None:
        """End status and the final meta; then :meth:`close`."""
        status = self.final_status = self.end_status(session)
        counts = self.control.progress()["counts"]
        log.info(
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
        if self.writer is not None:
            self.writes_landed = self.writer.close(timeout=EXPORT_DEADLINE)
            if not self.writes_landed:
                log.warning(
                    "etcd did not take the final status/results within %s s", EXPORT_DEADLINE
                )
        for hook in self.close_hooks:
            try:
                hook(self)
            except Exception:
                log.exception("taskctl close hook failed")
        if self.gateway is not None:
            self.gateway.close()
        # Spans and OTel logs share one deadline and flush side by side.
        deadline = time.monotonic() + EXPORT_DEADLINE
        logs_flushing = self.runlog.begin_shutdown()
        if self.tracer is not None:
            self.tracer.end_session(status, attributes)
            if not self.tracer.shutdown(deadline - time.monotonic()):
                log.warning(
                    "span export unfinished after %s s; traces.jsonl is complete", EXPORT_DEADLINE
                )
        self._restore_sigterm()
        self.runlog.stop()
        if logs_flushing is not None:
            logs_flushing.join(max(0.0, deadline - time.monotonic()))
        tracing.activate(None)

    # -- tests ------------------------------------------------------------------

    def test_attributes(self, item: pytest.Item) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "test.case.name": item.nodeid,
            "pytest.run_id": self.settings.run_id,
            "code.file.path": str(item.path),
        }
        line = item.location[1]
        if line is not None:
            attributes["code.line.number"] = line + 1
        function = getattr(item, "function", None)
        if function is not None:
            attributes["code.function.name"] = f"{function.__module__}.{function.__qualname__}"
        return attributes

    def record_report(self, report: pytest.TestReport) -> TestOutcome | None:
        """Fold a phase report into the test's outcome; returns it once teardown is in."""
        nodeid = report.nodeid  # a property that parses the id (pytest 9): read it once
        outcome = self.outcomes.get(nodeid)
        if outcome is None:
            outcome = self.outcomes[nodeid] = TestOutcome()
        outcome.record(report)
        if report.when != "teardown":
            return None
        del self.outcomes[nodeid]
        self.control.test_finished(outcome.counter)
        for hook in self.finished_hooks:
            hook(nodeid, outcome)
        return outcome

    # -- signals ----------------------------------------------------------------

    def _install_sigterm(self) -> None:
        """SIGTERM becomes KeyboardInterrupt, so the run ends INTERRUPTED with logs flushed."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt("SIGTERM")

        self._saved_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._saved_sigterm is not None:
            signal.signal(signal.SIGTERM, self._saved_sigterm)
            self._saved_sigterm = None


def header_lines(run: TaskRun) -> list[str]:
    settings = run.settings
    generated = (
        f" (generated: pass --run-id or set {RUN_ID_ENV} to choose one)"
        if settings.run_id_generated
        else ""
    )
    lines = [f"taskctl: run id {settings.run_id}{generated}"]
    if settings.run_id_generated:
        lines[0] = "taskctl: warning: no run id given; " + lines[0][len("taskctl: ") :]
    if run.etcd_error:
        lines.append(f"taskctl: warning: {run.etcd_error}; pause/cancel disabled for this run")
    else:
        lines.append(f"taskctl: control via {run.control_description}")
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


def argv_of(config: pytest.Config) -> list[str]:
    return [sys.argv[0], *config.invocation_params.args]
