"""The resume feature as a plugin object: records results, deselects what passed.

Every run records each test's outcome when the test is over (in etcd
through the run's writer, and locally; see :mod:`.history`).
``pytest --run-id ID --resume`` deselects the tests whose latest recorded
outcome passed and runs the rest (failed, errored, skipped, never run). A
result that never reached a record means the test runs again. A run
*without* ``--resume`` starts the run over: earlier results of the id are
dropped.

The run's lease is not taken here: the core takes it before anything is
written (:func:`pytest_taskctl.ownership.claim_run`) and hands this feature
the previous attempt's meta.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest

from ...etcd.gateway import delete_op, prefix_end
from ...keys import nodeid_identity
from ...outcome import TestOutcome
from .history import (
    RESULTS_FILE,
    LocalRecord,
    attempt_of,
    closed_attempts,
    earlier_records,
    passed_identities,
    result_json,
)

if TYPE_CHECKING:
    from ...run import TaskRun

log = logging.getLogger("pytest_taskctl.plugin")


def make_plugin(config: pytest.Config, run: TaskRun) -> object | None:
    """The plugin object to register for this run, or ``None``."""
    if config.option.taskctl_resume and run.settings.run_id_generated:
        raise pytest.UsageError(
            "--resume needs the id of the run to resume: pass --run-id ID (or set PYTEST_RUN_ID)"
        )
    return ResumePlugin(config, run)


class ResumePlugin:
    """Records results, holds the run's lease and, with ``--resume``, deselects passed tests.

    With pytest-xdist the controller records results and holds the lease (it
    receives every report); workers only read the results to deselect.
    """

    def __init__(self, config: pytest.Config, run: TaskRun) -> None:
        self.config = config
        self.run = run
        self.resume: bool = bool(config.option.taskctl_resume)
        self.keys = run.settings.keys
        self.local = LocalRecord(run.settings.run_dir / RESULTS_FILE)
        self.records = not run.is_worker
        self.recording = False  # results are recorded once the run has started
        self.etcd_ok = False  # the run's history was read from etcd
        self.attempt = 1
        self.source = ""  # where earlier results came from: "etcd", "local", or "" (none)
        self.earlier_results = 0
        self._passed: set[str] | None = None
        #: --resume found local results at least as recent as etcd's (an attempt without etcd).
        self.local_newer = False
        self.deselected = 0
        self.to_run = 0
        self.nothing_left = False
        self._lock = threading.Lock()  # to_run and the entry: tests end on several threads
        #: Earlier attempts (from the previous meta, --resume) and this attempt's entry,
        #: which is replaced, never mutated: the publisher may be serializing it.
        self._earlier_attempts: list[dict[str, Any]] = []
        self._entry: dict[str, Any] | None = None

    # -- start: history, attempt -----------------------------------------------------

    def pytest_taskctl_run_starting(
        self, run: TaskRun, previous_meta: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """Runs in ``TaskRun.start`` once the run owns its id, before anything is written."""
        if not self.records:
            return None
        etcd_results: list[dict[str, Any]] = []
        if run.ownership is not None and run.gateway is not None:
            try:
                etcd_results = self._read_results(run, previous_meta)
                self.etcd_ok = True
            except Exception as exc:  # etcd went away between connect and now
                log.warning("taskctl: could not read the run's history from etcd: %s", exc)
        etcd_attempt = attempt_of(previous_meta) if previous_meta is not None else 0
        if self.resume:
            local_attempts, local_results = self.local.read()
            # The latest result of each test wherever it was recorded: etcd may
            # have missed an attempt (down), the local file may miss others.
            self.attempt = max(etcd_attempt, local_attempts) + 1
            if self.etcd_ok and previous_meta is not None:
                self.source = "etcd"
            elif local_attempts:  # etcd unreachable, or it never saw this run
                self.source = "local"
            self._passed = passed_identities(etcd_results, local_results)
            self.earlier_results = (
                len(etcd_results) if self.source == "etcd" else len(local_results)
            )
            self.local_newer = self.source == "etcd" and local_attempts >= etcd_attempt > 0
        self.local.open(self.attempt, self.resume)
        self.recording = True
        entry = {
            "attempt": self.attempt,
            "started": round(time.time(), 3),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "resume": self.resume,
            "status": "RUNNING",
            "counts": self.run.control.counted(),
        }
        if self.source == "etcd" and previous_meta is not None:
            self._earlier_attempts = closed_attempts(previous_meta, run.previous_status)
        self._entry = entry
        run.meta_sources.append(self._progress_fields)
        tracer = run.tracer
        if tracer is not None:
            tracer.session_span.set_attribute("pytest.run.attempt", self.attempt)
            tracer.session_span.set_attribute("pytest.run.resumed", self.resume)
        return {"attempt": self.attempt, "attempts": [*self._earlier_attempts, entry], "left": None}

    def _read_results(
        self, run: TaskRun, previous_meta: Mapping[str, Any] | None
    ) -> list[dict[str, Any]]:
        """With --resume the earlier results in etcd; without, drop them (fenced): a new run."""
        gateway, ownership = run.gateway, run.ownership
        assert gateway is not None and ownership is not None
        if not self.resume:
            if previous_meta is not None:
                gateway.txn([delete_op(self.keys.results, prefix=True)], ownership.clauses())
            return []
        kvs = gateway.range(self.keys.results, prefix_end(self.keys.results)).kvs
        return earlier_records(kvs)

    # -- collection ----------------------------------------------------------------------

    def _passed_set(self) -> set[str]:
        if self._passed is None:  # an xdist worker: read what the controller loaded
            self._passed = set()
            gateway = self.run.gateway
            if gateway is not None:
                try:
                    kvs = gateway.range(self.keys.results, prefix_end(self.keys.results)).kvs
                    local = self.local.read()[1]
                    self._passed = passed_identities(earlier_records(kvs), local)
                except Exception as exc:
                    log.warning("taskctl: could not read earlier results: %s", exc)
            else:
                self._passed = passed_identities(self.local.read()[1])
        return self._passed

    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        # Not trylast: plugin.py's trylast hook counts the items that remain.
        if not self.resume:
            return
        passed = self._passed_set()
        if not passed:
            return
        keep: list[pytest.Item] = []
        done: list[pytest.Item] = []
        for item in items:
            (done if nodeid_identity(item.nodeid) in passed else keep).append(item)
        if done:
            config.hook.pytest_deselected(items=done)
            items[:] = keep
            self.deselected = len(done)

    @pytest.hookimpl(tryfirst=True)  # before the terminal reporter asks for the lines below
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        with self._lock:
            self.to_run = len(session.items)
            if self._entry is not None:
                self._update_attempt(
                    left=self.to_run,
                    collected=self.to_run + self.deselected,
                    deselected=self.deselected,
                    to_run=self.to_run,
                )

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        """pytest-xdist controller: what the workers kept after deselecting."""
        with self._lock:
            if len(ids) <= self.to_run:
                return
            first = not self.to_run
            self.to_run = len(ids)
            if self._entry is not None:
                self._update_attempt(left=self.to_run - self._passed_now(), to_run=self.to_run)
        if self.resume and first:  # the workers deselected: say what they kept, once
            passed = len(self._passed or ())
            self.run.notify(f"resume: {passed} passed in earlier attempts, {len(ids)} to run")

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        if not self.resume:
            return []
        run_id = self.keys.run_id
        if self.source == "local":
            why = "etcd has no history of it" if self.etcd_ok else "etcd unreachable"
            return [
                f"taskctl: resume: {why}; using the local record {self.local.path} "
                f"(attempt {self.attempt} of run {run_id})"
            ]
        if not self.source:
            where = "in etcd" if self.etcd_ok else f"(etcd unreachable, no {self.local.path})"
            return [
                f"taskctl: resume: no earlier results for run {run_id} {where}; running every test"
            ]
        lines = [
            f"taskctl: resume: attempt {self.attempt} of run {run_id}; "
            f"{self.earlier_results} results from earlier attempts in etcd"
        ]
        if self.local_newer:
            lines.append(
                f"taskctl: resume: merged with the local record {self.local.path}; "
                "the latest result of each test counts"
            )
        return lines

    def pytest_report_collectionfinish(self, config: pytest.Config) -> list[str]:
        if not self.resume:
            return []
        return [f"resume: {self.deselected} passed earlier, {self.to_run} to run"]

    # -- results -----------------------------------------------------------------------

    def pytest_taskctl_test_finished(self, run: TaskRun, nodeid: str, outcome: TestOutcome) -> None:
        """Queue the test's result: in etcd and in the local record.

        The run's control has counted it; the attempt's entry in the meta is made
        from those counts when the meta record is written (:meth:`_progress_fields`),
        not here on every test.
        """
        if self.records and self.recording and not run.lost_ownership:
            # The writer's next transaction (within tens of milliseconds) makes it durable
            # in etcd; the local record is appended here, one short write per test.
            record = result_json(nodeid, outcome, self.attempt)
            if run.writer is not None:
                run.writer.put(self.keys.result(nodeid), record)
            self.local.append_line('{"type":"result",' + record[1:] + "\n")

    def _passed_now(self) -> int:
        return self.run.control.counted()["passed"]

    def _progress_fields(self) -> dict[str, Any]:
        """This attempt's counts and what is left, for the meta record (writer's thread)."""
        counts = self.run.control.counted()
        with self._lock:
            if self._entry is None:
                return {}
            self._entry = {**self._entry, "counts": counts}
            fields: dict[str, Any] = {"attempts": [*self._earlier_attempts, self._entry]}
            if self.to_run:
                fields["left"] = self.to_run - counts["passed"]
            return fields

    def _update_attempt(self, left: int | None = None, **fields: Any) -> None:
        """Replace this attempt's entry (and ``left``, if given) in the run's meta.

        Call with ``self._lock`` held and ``self._entry`` set: with ``--thread``
        tests finish at once, and an older entry must never replace a newer one.
        One small dict and list per call, whatever the test count.
        """
        assert self._entry is not None
        self._entry = {**self._entry, **fields}
        meta: dict[str, Any] = {"attempts": [*self._earlier_attempts, self._entry]}
        if left is not None:
            meta["left"] = left
        self.run.control.update_meta(**meta)

    # -- end -------------------------------------------------------------------------

    def pytest_taskctl_run_finishing(self, run: TaskRun, session: pytest.Session) -> None:
        # With pytest-xdist the workers deselect; the controller only sees that none are left.
        deselected_all = bool(self.deselected) or (run.is_controller and bool(self._passed))
        self.nothing_left = self.resume and not self.to_run and deselected_all
        if self.nothing_left and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            # Everything passed earlier: the run is complete, not "no tests collected".
            session.exitstatus = pytest.ExitCode.OK
        if self._entry is not None:
            status = run.end_status(session)
            with self._lock:
                self._update_attempt(ended=round(time.time(), 3), status=status)
        self.local.close()

    def pytest_taskctl_run_closing(self, run: TaskRun) -> None:
        self.local.close()  # normally closed when the run finished; this is the no-session path

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        run_id = self.keys.run_id
        if self.nothing_left:
            how_many = f" ({self.deselected} in earlier attempts)" if self.deselected else ""
            terminalreporter.write_line(
                f"taskctl: resume: every test of run {run_id} has passed{how_many}; "
                "nothing left to run"
            )
            return
        if not self.records or not self.to_run:
            return
        left = self.to_run - self._passed_now()
        if left <= 0:
            if self.resume:
                terminalreporter.write_line(
                    f"taskctl: resume: every test of run {run_id} has now passed "
                    f"(attempt {self.attempt})"
                )
            return
        if not self.run.settings.run_id_generated:
            terminalreporter.write_line(
                f"taskctl: {left} test(s) of run {run_id} have not passed yet; "
                f"run them with: pytest --run-id {run_id} --resume"
            )
