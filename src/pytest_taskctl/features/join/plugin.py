"""The joined process's plugin: join, check the plan, claim-run-acknowledge, leave.

It replaces the resume plugin of a plain run: results are written with the
claim's acknowledgement (fenced), the run id is shared rather than owned, and
``--resume`` deselects what passed in *earlier attempts* only, so every
process of one attempt deselects the same tests and collects the same plan.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from ...etcd.gateway import prefix_end
from ...keys import nodeid_identity
from ...outcome import TestOutcome
from ...process import process_identity
from ...records import json_object
from ..resume import passed_identities, result_json
from .claims import Claim, tear_down_for
from .ending import end_run
from .layout import JoinKeys
from .membership import Attempt, JoinRefused, Membership, new_worker_id
from .pausing import JoinedPause
from .plan import PlanMismatch, settle_plan
from .queue import IDLE_POLL, WorkQueue
from .threads import ThreadFeed
from .tracelink import link_session
from .workers import worker_record

if TYPE_CHECKING:
    from ...run import TaskRun
    from ..groups.schedule import Schedule

log = logging.getLogger("pytest_taskctl.plugin")

#: How long the last acknowledgements may take when the process leaves.
ACK_DEADLINE = 5.0


class JoinPlugin:
    """One process of a joined run."""

    def __init__(self, config: pytest.Config, run: TaskRun) -> None:
        self.config = config
        self.run = run
        self.resume = bool(config.option.taskctl_resume)
        self.keys = JoinKeys(run.settings.keys)
        self.worker_id = new_worker_id()
        self.threads = config.option.taskctl_threads or 1
        self.membership: Membership | None = None
        self.attempt: Attempt | None = None
        self.queue: WorkQueue | None = None
        self.items: list[pytest.Item] = []
        self.plan: dict[str, Any] = {}
        self._claims: dict[str, Claim] = {}
        self._passed: set[str] = set()
        self.deselected = 0
        self.counts = {"passed": 0, "failed": 0, "skipped": 0}
        self.given_up: list[str] = []
        #: Tests this process ran whose results were refused: others had taken them over.
        self.discarded: list[str] = []
        self.pause: JoinedPause | None = None
        self.state = "STARTING"
        self.started = time.time()
        self._lock = threading.Lock()
        self._heartbeat = threading.Event()

    # -- joining ------------------------------------------------------------------

    def pytest_taskctl_run_starting(
        self, run: TaskRun, previous_meta: Mapping[str, Any] | None
    ) -> None:
        gateway = run.gateway
        if gateway is None:
            raise pytest.UsageError(
                f"--join needs etcd to share run {run.settings.run_id}: {run.etcd_error}"
            )
        self.membership = Membership(gateway, self.keys, self.worker_id)
        try:
            self.attempt = self.membership.join(self.resume, self._run_meta(run))
            if self.resume:
                self._passed = self._passed_earlier(self.attempt.number)
        except JoinRefused as exc:
            raise pytest.UsageError(str(exc)) from None
        except Exception as exc:  # etcd went away between connect and now
            self.membership.leave()
            raise pytest.UsageError(
                f"--join: could not join run {run.settings.run_id}: {exc}"
            ) from None
        self.state = "RUNNING"
        self._publish()
        threading.Thread(target=self._beat, name="taskctl-join-beat", daemon=True).start()

    def _run_meta(self, run: TaskRun) -> dict[str, Any]:
        assert run.tracer is not None
        context = run.tracer.session_context
        return {
            "run_id": run.settings.run_id,
            "started": time.time(),
            **process_identity(),
            "trace_id": f"{context.trace_id:032x}",
            "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-01",
        }

    def _passed_earlier(self, attempt: int) -> set[str]:
        """Tests that passed in attempts before this one (this attempt's results do not count)."""
        assert self.run.gateway is not None
        results = self.keys.run.results
        kvs = self.run.gateway.range(results, prefix_end(results)).kvs
        records = [r for r in (json_object(kv.value) for kv in kvs) if r]
        return passed_identities([r for r in records if int(r.get("attempt", 0) or 0) < attempt])

    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        if not self._passed:
            return
        keep = [item for item in items if nodeid_identity(item.nodeid) not in self._passed]
        done = [item for item in items if nodeid_identity(item.nodeid) in self._passed]
        if done:
            config.hook.pytest_deselected(items=done)
            items[:] = keep
            self.deselected = len(done)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        if self.attempt is None:
            return []
        how = "opened" if self.attempt.opened else "joined"
        return [
            f"taskctl: join: {how} attempt {self.attempt.number} of run "
            f"{self.run.settings.run_id} as {self.worker_id}"
        ]

    # -- the loop -----------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            return None  # pytest's own loop reports the collection errors
        if session.config.option.collectonly or self.membership is None:
            return None
        if self.threads > 1 and session.items:
            return None  # the group runner's threads run them: pytest_taskctl_thread_source
        self._open_queue(session, 1)
        assert self.queue is not None
        pending: deque[tuple[Claim, pytest.Item]] = deque()
        nextitem: pytest.Item | None = None
        while True:
            if not pending:
                self._refill(pending, wait=True)
            if not pending:
                break
            claim, item = pending.popleft()
            if not self.queue.still_ours(claim):
                log.warning("join: %s went to another process while we were away", item.nodeid)
                continue
            if nextitem is not None and nextitem is not item:
                tear_down_for(session, item)  # the item announced as next was dropped
            if not pending:
                self._refill(pending, wait=False)  # pytest tears fixtures down by nextitem
            self._running(claim)
            nextitem = pending[0][1] if pending else None
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            if session.shouldfail:
                raise session.Failed(session.shouldfail)
            if session.shouldstop:
                raise session.Interrupted(session.shouldstop)
        return True

    def pytest_taskctl_thread_source(
        self, session: pytest.Session, schedule: Schedule, threads: int
    ) -> Callable[[], int | None] | None:
        """``--thread N``: the group runner's threads take the tests this process claims."""
        if self.membership is None:
            return None
        self._open_queue(session, threads)
        assert self.queue is not None
        feed = ThreadFeed(
            self.queue,
            schedule,
            threads,
            started=self._running,
            stopping=self._stopping,
            set_state=self._set_state,
        )
        return feed.take

    def _stopping(self) -> bool:
        """Claim nothing more: the run was cancelled or interrupted."""
        return self.run.control.is_cancelled() or self.run.interrupted

    def _running(self, claim: Claim) -> None:
        """The claim's test starts: its result is acknowledged against this claim."""
        self._claims[self.items[claim.index].nodeid] = claim

    def _open_queue(self, session: pytest.Session, threads: int) -> None:
        """Check the collection against the run's plan and start mirroring the queue."""
        self.items = list(session.items)
        self._settle_plan([item.nodeid for item in self.items])
        assert self.run.gateway is not None and self.attempt is not None
        assert self.run.writer is not None  # made with the gateway
        self.queue = WorkQueue(
            self.run.gateway,
            self.keys,
            self.worker_id,
            len(self.items),
            lambda: self.membership.lease if self.membership else None,
            self._give_up_record,
            self._given_up,
            self.run.writer,
            threads,
        ).start()
        self._watch_pause(self.queue)

    def _watch_pause(self, queue: WorkQueue) -> None:
        """Take part in the run's PAUSED status (:mod:`.pausing`) from now on."""
        run, view = self.run, self.run.view
        if run.writer is None or view is None:
            return  # no watched flags (etcd went away at the start): no pause either
        self.pause = JoinedPause(
            self.keys,
            self.worker_id,
            run.writer,
            lambda: view.get(self.keys.run.paused),
            queue.members,
            lambda: self.membership.lease_id if self.membership else 0,
            lambda: self.state == "IDLE" and not run.control.busy,
            self._publish_now,
        ).attach(run.control, view, queue)

    def _settle_plan(self, nodeids: list[str]) -> None:
        assert self.run.gateway is not None and self.attempt is not None
        tracer = self.run.tracer
        fields = {"attempt": self.attempt.number, "worker": self.worker_id, **process_identity()}
        if tracer is not None:
            fields["traceparent"] = self._run_meta(self.run)["traceparent"]
        try:
            self.plan, created = settle_plan(self.run.gateway, self.keys, nodeids, fields)
        except PlanMismatch as exc:
            raise pytest.UsageError(str(exc)) from None
        if not created and tracer is not None:
            link_session(tracer.session_span, self.plan.get("traceparent"))

    def _refill(self, pending: deque[tuple[Claim, pytest.Item]], wait: bool) -> None:
        """Claim the next tests; with ``wait``, until some are free, all are done or cancel."""
        queue = self.queue
        assert queue is not None
        seen = queue.changes
        while True:
            if self._stopping():
                return
            claims = queue.claim()
            if claims:
                pending.extend((claim, self.items[claim.index]) for claim in claims)
                self._set_state("RUNNING")
                return
            if not wait or queue.finished:
                return
            self._set_state("IDLE")  # others still run tests; theirs may come back
            seen = queue.wait_for_change(seen, IDLE_POLL)

    # -- results ------------------------------------------------------------------

    def pytest_taskctl_test_finished(self, run: TaskRun, nodeid: str, outcome: TestOutcome) -> None:
        with self._lock:
            self.counts[outcome.counter] += 1
        self._publish()
        if self.pause is not None:
            self.pause.update()  # its last running test ended: an idle process may be paused
        claim = self._claims.pop(nodeid, None)
        if claim is None or self.queue is None or self.attempt is None:
            return
        self.queue.ack(
            claim,
            self.keys.run.result(nodeid),
            result_json(nodeid, outcome, self.attempt.number, {"worker": self.worker_id}),
            lambda: self._discard(nodeid, outcome.counter),
        )

    def _discard(self, nodeid: str, counter: str) -> None:
        """Our result was refused (another process ran the test meanwhile): theirs counts."""
        with self._lock:
            self.counts[counter] -= 1
            self.discarded.append(nodeid)
        self._publish_now()

    def _give_up_record(self, index: int, deaths: int) -> tuple[str, str]:
        nodeid = self.items[index].nodeid
        reason = (
            f"taskctl: --join: the processes running this test died {deaths} times "
            "(crash, SIGKILL, lost machine); not handed out again"
        )
        attempt = self.attempt.number if self.attempt else 1
        record = result_json(nodeid, TestOutcome(word="error"), attempt, {"reason": reason})
        return self.keys.run.result(nodeid), record

    def _given_up(self, index: int, deaths: int) -> None:
        nodeid = self.items[index].nodeid
        with self._lock:
            self.given_up.append(nodeid)
            self.counts["failed"] += 1
        self.run.notify(
            f"taskctl: join: {nodeid} ERROR: its process died {deaths} times; "
            "recorded as an error, not run again"
        )

    # -- the worker record ----------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._publish()
            if self.pause is not None:
                self.pause.update()  # idle under the pause flag counts as paused

    def _worker_json(self) -> str:
        state = self.state
        if self.pause is not None and self.pause.paused and state in ("RUNNING", "IDLE"):
            state = "PAUSED"
        with self._lock:
            counts, given_up = dict(self.counts), list(self.given_up)
        claims = self.queue.claim_txns if self.queue else 0
        return worker_record(self.worker_id, state, counts, given_up, claims, self.started)

    def _publish(self, interval: float = 0.5) -> None:
        writer = self.run.writer
        if writer is not None:
            writer.put_lazy(self.keys.worker(self.worker_id), self._worker_json, interval=interval)

    def _publish_now(self) -> None:
        """The record with the next batch (with our paused key): ``taskctl status`` agrees."""
        self._publish(interval=0.0)

    def _beat(self) -> None:
        """Republish now and then: a pause holds the loop, and the record says PAUSED."""
        while not self._heartbeat.wait(1.0):
            self._publish()

    # -- the end ------------------------------------------------------------------------

    def pytest_taskctl_run_finishing(self, run: TaskRun, session: pytest.Session) -> None:
        if self.deselected and not self.items and session.exitstatus == 5:
            session.exitstatus = pytest.ExitCode.OK  # every test passed in earlier attempts
        if self.given_up and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # this process recorded the error

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.queue is None:
            return
        ran = sum(self.counts.values()) + len(self.discarded)
        terminalreporter.write_line(
            f"taskctl: join: this process ran {ran} of the run's {self.queue.count} tests "
            f"({self.queue.claim_txns} claims) as {self.worker_id}"
        )
        if self.discarded:
            terminalreporter.write_line(
                f"taskctl: join: {len(self.discarded)} result(s) of this process were not "
                "recorded: another process ran those tests while this one was stopped past "
                "its lease (theirs count): " + ", ".join(self.discarded)
            )

    def pytest_taskctl_run_closing(self, run: TaskRun) -> None:
        """Land the last results, leave; the last process out writes the run's end status."""
        self._heartbeat.set()
        if self.membership is None:
            return
        if self.pause is not None:
            self.pause.stop()
        queue = self.queue
        if run.writer is not None and not run.writer.flush(ACK_DEADLINE):
            log.warning("join: the last results did not reach etcd within %s s", ACK_DEADLINE)
        self.state = run.final_status or "INTERRUPTED"
        gateway = run.gateway
        try:
            if gateway is not None and self.attempt is not None:
                gateway.put(self.keys.worker(self.worker_id), self._worker_json())
        except Exception as exc:
            log.debug("join: could not write the final worker record: %s", exc)
        last = self.membership.leave()
        finished = queue is not None and queue.finished
        if queue is not None:
            queue.stop()
        if last and gateway is not None:
            cancelled = run.control.cancel_seen or run.control.is_cancelled()
            end_run(gateway, self.keys, int(self.plan.get("count", 0) or 0), cancelled, finished)
