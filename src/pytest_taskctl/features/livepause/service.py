"""Live pauses on failure and at checkpoints: the waiting side.

A pausing test writes ``<run>/pauses/<pause_id>`` (JSON, ``state: pending``)
and waits -- its fixtures alive, before teardown -- until a person answers
with ``taskctl decide``, ``--pause-timeout`` expires, or the run is
cancelled. The waiting side watches the key (a decision is acted on within
milliseconds) and looks at the run's cancel flag in the run's watched view.

Each pause record names a lease the pausing process keeps alive while it
waits: when the process dies, the lease expires and the pause is *stale*.
Listing and answering pauses, without pytest, is :mod:`..pauses`; the hooks,
fixtures and :func:`checkpoint` that reach this service are in :mod:`.plugin`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pytest
from opentelemetry import trace

from ...control import CANCEL_REASON
from ...etcd.endpoints import is_connection_failure
from ...etcd.gateway import EtcdGateway, RangeResult, key_missing, mod_revision_equals, put_op
from ...etcd.lease import Lease
from ...etcd.watch import WatchedRange
from ...process import process_identity
from ..pauses import RESULT_TOKENS, new_pause_id, pause_record, result_token

if TYPE_CHECKING:
    from ...run import TaskRun

log = logging.getLogger("pytest_taskctl.plugin")

FAILURE_TASK = "Inspect the failure and then resume the test."
CHECKPOINT_TASK = "Complete the pending task and then resume the paused test."
#: How often a waiting pause looks at the run's (locally watched) cancel flag.
CANCEL_POLL = 0.05
#: TTL of the lease a waiting pause keeps alive; a dead process's pause is stale after this.
PAUSE_LEASE_TTL = 10
#: How often a waiting pause tries to replace a lease that expired during an etcd outage.
RENEW_RETRY = 1.0
MAX_FAILURE_TEXT = 16_000
#: How long a pause just written waits for etcd to answer the read that follows.
READ_BACK_DEADLINE = 10.0


@dataclass(slots=True)
class ResumeDecision:
    """What a live pause ended with.

    ``outcome``: ``resumed`` (someone decided), ``timed_out`` (nobody did in
    time, or no pause was possible), or ``cancelled`` (the run was cancelled
    meanwhile; the rest of the run is skipped). ``result`` and ``reason``
    answer a checkpoint; ``failure_reason`` annotates a failure.
    """

    outcome: Literal["resumed", "timed_out", "cancelled"]
    failure_reason: str | None = None
    result: bool | None = None
    reason: str | None = None
    pause_id: str | None = None


_ACTIVE_ITEM: ContextVar[pytest.Item | None] = ContextVar("taskctl_active_item", default=None)


# -- decisions ------------------------------------------------------------------------


def _decision_of(record: Mapping[str, Any] | None, pause_id: str) -> ResumeDecision:
    if record is None:  # someone deleted the record: nobody will answer; go on
        return ResumeDecision("resumed", reason="pause record removed", pause_id=pause_id)
    state = record.get("state")
    if state in ("timed_out", "cancelled"):
        return ResumeDecision(state, pause_id=pause_id)
    result = record.get("result")
    failure_reason = record.get("failure_reason")
    reason = record.get("reason")
    return ResumeDecision(
        "resumed",
        failure_reason=failure_reason if isinstance(failure_reason, str) else None,
        result=result if isinstance(result, bool) else None,
        reason=reason if isinstance(reason, str) else None,
        pause_id=pause_id,
    )


def _answered(key: str) -> Callable[[Mapping[str, bytes]], bool]:
    def answered(values: Mapping[str, bytes]) -> bool:
        record = pause_record(values.get(key))
        return record is None or record.get("state") != "pending"

    return answered


# -- the waiting side -----------------------------------------------------------------


class LivePauses:
    """Creates pauses for one run and waits for their answers."""

    def __init__(self, config: pytest.Config, run: TaskRun) -> None:
        self.config = config
        self.run = run
        self.default_timeout: float = config.option.pause_timeout
        self.mock: str | None = config.option.pause_checkpoint_mock

    def checkpoint(self, nodeid: str, task: str, timeout: float | None) -> ResumeDecision:
        if self.mock is not None:
            decision = ResumeDecision("resumed", result=RESULT_TOKENS[self.mock], reason="Mock")
            self._finished(nodeid, "checkpoint", task, decision, 0.0)
            return decision
        return self.pause("checkpoint", nodeid, task, self._timeout(timeout))

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.default_timeout
        if not 0 <= timeout < float("inf"):
            raise ValueError(f"checkpoint timeout must be 0 or more seconds, got {timeout}")
        return float(timeout)

    def pause(
        self, kind: str, nodeid: str, task: str, timeout: float, failure: str = ""
    ) -> ResumeDecision:
        """Write the pause record; block until it is answered, times out or the run is cancelled."""
        run = self.run
        if run.control.is_cancelled():
            decision = ResumeDecision("cancelled", reason=CANCEL_REASON)
            self._finished(nodeid, kind, task, decision, 0.0)
            return decision
        gateway = run.gateway
        keys = run.settings.keys
        pause_id = new_pause_id(keys.run_id)
        key = keys.pause(pause_id)
        now = time.time()
        record: dict[str, Any] = {
            "pause_id": pause_id,
            "run_id": keys.run_id,
            "kind": kind,
            "nodeid": nodeid,
            "task": task,
            "failure": failure[-MAX_FAILURE_TEXT:],
            **process_identity(),
            "created": round(now, 3),
            "timeout": timeout,
            "deadline": round(now + timeout, 3),
            "state": "pending",
        }
        lease: Lease | None = None
        try:
            if gateway is None:
                raise ConnectionError(run.etcd_error or "etcd unreachable")
            lease = Lease.grant(gateway, PAUSE_LEASE_TTL)
            record["lease"] = lease.id
            if not gateway.txn([put_op(key, json.dumps(record))], [key_missing(key)]):
                raise RuntimeError(f"pause id {pause_id} already taken")
            initial = _read_back(gateway, key)
        except Exception as exc:
            if lease is not None:
                lease.revoke()
            self._say(f"taskctl: cannot pause {nodeid} for a decision: {exc}; going on")
            decision = ResumeDecision(
                "timed_out", reason=f"taskctl: no live pause possible ({exc})"
            )
            self._finished(nodeid, kind, task, decision, 0.0)
            return decision
        self._announce(record)
        started = time.monotonic()
        decision = self._wait(gateway, key, record, initial, timeout, lease)
        self._finished(nodeid, kind, task, decision, time.monotonic() - started)
        return decision

    def _wait(
        self,
        gateway: EtcdGateway,
        key: str,
        record: dict[str, Any],
        initial: RangeResult,
        timeout: float,
        lease: Lease,
    ) -> ResumeDecision:
        """Wait for the answer; the pause's lease (kept alive meanwhile) is revoked at the end."""
        pause_id = record["pause_id"]
        revision = initial.kvs[0].mod_revision
        answered = _answered(key)
        view = WatchedRange(gateway, key).start(initial)
        deadline = time.monotonic() + timeout
        next_renewal = 0.0
        try:
            try:
                while True:
                    remaining = max(0.0, deadline - time.monotonic())
                    if view.wait_until(answered, min(remaining, CANCEL_POLL)):
                        return _decision_of(pause_record(view.get(key)), pause_id)
                    if self.run.control.is_cancelled():
                        outcome: Literal["timed_out", "cancelled"] = "cancelled"
                        break
                    now = time.monotonic()
                    if now >= deadline:
                        outcome = "timed_out"
                        break
                    if lease.done.is_set() and now >= next_renewal:
                        next_renewal = now + RENEW_RETRY
                        lease, revision = self._renew_lease(gateway, key, record, revision, lease)
            finally:
                view.stop()
            return self._close(gateway, key, record, revision, outcome)
        finally:
            lease.revoke()

    def _renew_lease(
        self, gateway: EtcdGateway, key: str, record: dict[str, Any], revision: int, lease: Lease
    ) -> tuple[Lease, int]:
        """The pause's lease expired during a long etcd outage: name a new one in the record."""
        try:
            renewed = Lease.grant(gateway, PAUSE_LEASE_TTL)
        except Exception as exc:  # etcd away: the decision cannot come meanwhile either
            log.debug("pause lease renewal failed: %s", exc)
            return lease, revision
        update = {**record, "lease": renewed.id}
        try:
            if gateway.txn([put_op(key, json.dumps(update))], [mod_revision_equals(key, revision)]):
                record.update(update)
                found = gateway.range(key).kvs
                return renewed, found[0].mod_revision if found else revision
        except Exception as exc:
            log.debug("pause lease renewal failed: %s", exc)
        renewed.revoke()  # answered meanwhile (the watch will tell), or etcd away again
        return lease, revision

    def _close(
        self,
        gateway: EtcdGateway,
        key: str,
        record: dict[str, Any],
        revision: int,
        outcome: Literal["timed_out", "cancelled"],
    ) -> ResumeDecision:
        """Mark the record timed out/cancelled -- unless a decision got there first."""
        pause_id = record["pause_id"]
        final = json.dumps({**record, "state": outcome, "ended": round(time.time(), 3)})
        try:
            if gateway.txn([put_op(key, final)], [mod_revision_equals(key, revision)]):
                return ResumeDecision(outcome, pause_id=pause_id)
            current = pause_record(gateway.get(key))
            if current is None or current.get("state") != "pending":
                return _decision_of(current, pause_id)
        except Exception as exc:
            log.debug("could not close pause %s in etcd: %s", pause_id, exc)
            if self.run.writer is not None:
                self.run.writer.put(key, final)
        return ResumeDecision(outcome, pause_id=pause_id)

    # -- telling people ------------------------------------------------------------------

    def _say(self, *lines: str) -> None:
        """Write to the terminal even while pytest captures the test's output."""
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is None:
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        disabled = (
            capture.global_and_fixture_disabled()
            if capture is not None
            else contextlib.nullcontext()
        )
        with disabled:
            terminal.ensure_newline()
            for line in lines:
                terminal.write_line(line)

    def _announce(self, record: Mapping[str, Any]) -> None:
        pause_id, kind, nodeid = record["pause_id"], record["kind"], record["nodeid"]
        answer = (
            "[--failure-reason TEXT]"
            if kind == "failure"
            else "--result true|false|none [--reason TEXT]"
        )
        self.run.runlog.line(
            logging.INFO,
            "live pause %s (%s) of %s: waiting up to %.0f s; task: %s",
            pause_id,
            kind,
            nodeid,
            record["timeout"],
            record["task"],
        )
        self._say(
            f"taskctl: PAUSED {nodeid} ({kind}) -- waiting up to {record['timeout']:.0f} s "
            "for a decision",
            f"taskctl:   task: {record['task']}",
            f"taskctl:   answer: taskctl decide {pause_id} {answer}",
        )

    def _finished(
        self, nodeid: str, kind: str, task: str, decision: ResumeDecision, waited: float
    ) -> None:
        attributes: dict[str, Any] = {
            "taskctl.pause.kind": kind,
            "taskctl.pause.outcome": decision.outcome,
            "taskctl.pause.waited_s": round(waited, 3),
            "taskctl.pause.task": task,
            "taskctl.pause.result": result_token(decision.result),
        }
        for name, value in (
            ("taskctl.pause.id", decision.pause_id),
            ("taskctl.pause.reason", decision.reason),
            ("taskctl.pause.failure_reason", decision.failure_reason),
        ):
            if value is not None:
                attributes[name] = value
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("taskctl.live_pause", attributes)
        details = ", ".join(
            text
            for text in (
                f"result {attributes['taskctl.pause.result']}"
                if kind == "checkpoint" and decision.outcome == "resumed"
                else None,
                f"reason {decision.reason!r}" if decision.reason is not None else None,
                f"failure reason {decision.failure_reason!r}"
                if decision.failure_reason is not None
                else None,
            )
            if text is not None
        )
        self.run.runlog.line(
            logging.INFO,
            "live pause %s (%s) of %s: %s after %.1f s%s",
            decision.pause_id or "-",
            kind,
            nodeid,
            decision.outcome,
            waited,
            f": {details}" if details else "",
        )
        if decision.pause_id is not None:
            self._say(
                f"taskctl: live pause {decision.pause_id} {decision.outcome} after {waited:.1f} s"
                + (f": {details}" if details else "")
            )


def _read_back(gateway: EtcdGateway, key: str) -> RangeResult:
    """The pause's record as etcd has it, just written.

    The record is already there for a person to see (and kept by its lease):
    etcd restarting right after the write must not make the test give up the
    pause, so a lost connection is retried for :data:`READ_BACK_DEADLINE`.
    """
    deadline = time.monotonic() + READ_BACK_DEADLINE
    delay = 0.05
    while True:
        try:
            return gateway.range(key)
        except Exception as exc:
            if not is_connection_failure(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
