"""pytest-xdist: one run, whatever the number of workers.

The controller runs no tests; each worker runs some, with its own gate on
its own watched view of the run's flags (so pause and cancel reach every
worker without the controller relaying them). What this module adds on the
controller:

* the workers join the controller's ``pytest session`` span: its
  traceparent goes to them in ``workerinput``, so every test span of every
  worker links to the one session span;
* the run's status: a worker held at the gate has sent the controller the
  end of its last test and not the start of its next (the gate comes
  before ``pytest_runtest_logstart``). So the controller, which sees every
  worker's reports and watches the ``paused`` flag, writes ``PAUSED`` when
  the flag is set and no test is running on any worker, and ``RUNNING``
  again when a test starts or the flag goes.

A worker that has not yet seen the flag may start one more test after the
controller wrote ``PAUSED``; the status then goes back to ``RUNNING`` until
that test ends, the same rule a single process follows.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest

from .config import WORKER_SESSION
from .keys import flag_is_true
from .telemetry.traceid import format_traceparent

if TYPE_CHECKING:
    from .run import TaskRun

#: How often the flag watcher wakes to see whether the run is ending (seconds).
WATCH_TICK = 0.5


class XdistController:
    """On the controller: the session span for the workers, and PAUSED/RUNNING from reports."""

    def __init__(self, run: TaskRun) -> None:
        self.run = run
        self._running: set[str] = set()
        self._workers: set[str] = set()
        self._collected: set[str] = set()
        self._total = 0
        self._status = "RUNNING"  # what RunControl.start wrote
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- session span -------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        # xdist configures nodes in its (trylast) sessionstart, after run.start.
        tracer = self.run.tracer
        if tracer is not None:
            node.workerinput[WORKER_SESSION] = format_traceparent(tracer.session_context)

    # -- what the workers are doing ---------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        with self._lock:
            self._workers.add(node.gateway.id)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        with self._lock:
            self._workers.discard(node.gateway.id)
        self.refresh()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        with self._lock:
            self._collected.add(node.gateway.id)
            self._total = max(self._total, len(ids))
        self.refresh()

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        with self._lock:
            self._running.add(nodeid)
        self.refresh()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # "teardown" ends a test; a crashed worker's test gets one report of its own.
        if report.when not in ("setup", "call"):
            with self._lock:
                self._running.discard(report.nodeid)
            self.refresh()

    # -- status -----------------------------------------------------------------------

    def _flags(self, values: Mapping[str, bytes]) -> tuple[bool, bool]:
        keys = self.run.settings.keys
        return flag_is_true(values.get(keys.paused)), flag_is_true(values.get(keys.cancelled))

    def held(self) -> bool:
        """Paused (not cancelled), no test running, every worker past collection, tests left."""
        view = self.run.view
        if view is None:
            return False
        paused, cancelled = self._flags(view.snapshot())
        counts = self.run.control.progress()["counts"]
        done = counts["passed"] + counts["failed"] + counts["skipped"]
        with self._lock:
            return (
                paused
                and not cancelled
                and not self._running
                and bool(self._workers)
                and self._workers <= self._collected
                and done < self._total
            )

    def refresh(self) -> None:
        """Write PAUSED or RUNNING when it changes; never after the run's end status."""
        held = self.held()
        with self._lock:
            status = "PAUSED" if held else "RUNNING"
            if self._stopped.is_set() or status == self._status:
                return
            self._status = status
            writer = self.run.writer
            if writer is not None:
                writer.put(self.run.settings.keys.status, status)
        keys = self.run.settings.keys
        if held:
            self.run.notify(
                f"taskctl: PAUSED: every worker waits at the gate; resume with: "
                f"etcdctl del {keys.paused}  (or taskctl resume {keys.run_id})"
            )
        else:
            self.run.notify("taskctl: resumed")

    def _watch(self) -> None:
        """Follow the flags: a pause set (or lifted) while every worker is idle changes status."""
        view = self.run.view
        assert view is not None
        while not self._stopped.is_set():
            seen = self._flags(view.snapshot())
            self.refresh()

            def changed(values: Mapping[str, bytes], seen: tuple[bool, bool] = seen) -> bool:
                return self._flags(values) != seen or self._stopped.is_set()

            view.wait_until(changed, timeout=WATCH_TICK)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.run.view is not None and self.run.writer is not None:
            self._watcher = threading.Thread(
                target=self._watch, name="taskctl-xdist-status", daemon=True
            )
            self._watcher.start()

    # -- end ----------------------------------------------------------------------------

    def pytest_taskctl_run_finishing(self, run: TaskRun, session: pytest.Session) -> None:
        """From here on the run's end status is written: no PAUSED/RUNNING after it."""
        with self._lock:
            self._stopped.set()

    def pytest_taskctl_run_closing(self, run: TaskRun) -> None:
        self._stopped.set()
        if self._watcher is not None:
            self._watcher.join(2 * WATCH_TICK)
