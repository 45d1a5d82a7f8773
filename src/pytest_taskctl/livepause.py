"""Live pauses on failure and at checkpoints (seed 004), answered through etcd.

A pausing test writes ``<run>/pauses/<pause_id>`` (JSON, ``state: pending``)
and waits -- its fixtures alive, before teardown -- until a person answers
with ``taskctl decide``, ``--pause-timeout`` expires, or the run is
cancelled. The waiting side watches the key (a decision is acted on within
milliseconds) and looks at the run's cancel flag in the run's watched view.

An answer is a transaction that compares the key's revision, so of two
people deciding at once exactly one wins. Each pause record names a lease
the pausing process keeps alive while it waits: when the process dies, the
lease expires and the pause is *stale* (on the same host at once, from the
pid) and can no longer be answered.

``pause_id`` is ``<run_id>.<8 hex digits>``, so ``taskctl decide`` finds the
run from the id alone.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pytest
from opentelemetry import trace

from .control import CANCEL_REASON
from .keys import RunKeys, runs_root, validate_run_id
from .resume import local_process_dead, process_identity
from .store import (
    EtcdGateway,
    RangeResult,
    StateStore,
    WatchedRange,
    key_missing,
    mod_revision_equals,
    prefix_end,
    put_op,
)

if TYPE_CHECKING:
    from .run import TaskRun

log = logging.getLogger("pytest_taskctl.plugin")

FAILURE_TASK = "Inspect the failure and then resume the test."
CHECKPOINT_TASK = "Complete the pending task and then resume the paused test."
#: How often a waiting pause looks at the run's (locally watched) cancel flag.
CANCEL_POLL = 0.05
#: TTL of the lease a waiting pause keeps alive; a dead process's pause is stale after this.
PAUSE_LEASE_TTL = 10
MAX_FAILURE_TEXT = 16_000
RESULT_TOKENS: dict[str, bool | None] = {"true": True, "false": False, "none": None}
STATES = ("pending", "decided", "timed_out", "cancelled", "stale")

PAUSE_ON_FAILURE_HELP = (
    "when a test fails, pause before its teardown (fixtures alive) until someone answers "
    "with `taskctl decide PAUSE_ID` or --pause-timeout expires"
)
PAUSE_TIMEOUT_HELP = "seconds a live pause waits for a decision (default 300)"
PAUSE_MOCK_HELP = (
    "answer every checkpoint() at once with this result (reason 'Mock'), for unattended runs"
)


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


class PauseError(Exception):
    """A pause that cannot be answered: unknown, no longer pending, stale, wrong arguments."""


_ACTIVE_ITEM: ContextVar[pytest.Item | None] = ContextVar("taskctl_active_item", default=None)


# -- pause ids and records ------------------------------------------------------------


def new_pause_id(run_id: str) -> str:
    return f"{run_id}.{secrets.token_hex(4)}"


def run_id_of(pause_id: str) -> str:
    """The run a pause id belongs to; :class:`PauseError` if it is not a pause id."""
    run_id, dot, suffix = pause_id.rpartition(".")
    try:
        if not dot or len(suffix) != 8 or int(suffix, 16) < 0:
            raise ValueError(pause_id)
        return validate_run_id(run_id)
    except ValueError:
        raise PauseError(
            f"not a pause id: {pause_id!r} (expected RUN_ID.XXXXXXXX, see `taskctl pauses`)"
        ) from None


def _record_of(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return {"state": "unknown"}
    return record if isinstance(record, dict) else {"state": "unknown"}


def effective_state(record: Mapping[str, Any], gateway: EtcdGateway | None) -> str:
    """The recorded state, except that a pending pause of a dead process is ``stale``."""
    state = str(record.get("state", "unknown"))
    if state != "pending":
        return state
    if local_process_dead(record):
        return "stale"
    lease = record.get("lease")
    expired = gateway is not None and isinstance(lease, int) and gateway.lease_ttl(lease) <= 0
    return "stale" if expired else "pending"


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


def _answered(key: str) -> Any:
    def answered(values: Mapping[str, bytes]) -> bool:
        record = _record_of(values.get(key))
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
        if timeout < 0:
            raise ValueError(f"checkpoint timeout must not be negative, got {timeout}")
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
        try:
            if gateway is None:
                raise ConnectionError(run.etcd_error or "etcd unreachable")
            record["lease"] = gateway.lease_grant(PAUSE_LEASE_TTL)
            if not gateway.txn([put_op(key, json.dumps(record))], [key_missing(key)]):
                raise RuntimeError(f"pause id {pause_id} already taken")
            initial = gateway.range(key)
        except Exception as exc:
            self._say(f"taskctl: cannot pause {nodeid} for a decision: {exc}; going on")
            decision = ResumeDecision(
                "timed_out", reason=f"taskctl: no live pause possible ({exc})"
            )
            self._finished(nodeid, kind, task, decision, 0.0)
            return decision
        self._announce(record)
        started = time.monotonic()
        try:
            decision = self._wait(gateway, key, record, initial, timeout)
        finally:
            with contextlib.suppress(Exception):
                gateway.lease_revoke(record["lease"])
        self._finished(nodeid, kind, task, decision, time.monotonic() - started)
        return decision

    def _wait(
        self,
        gateway: EtcdGateway,
        key: str,
        record: dict[str, Any],
        initial: RangeResult,
        timeout: float,
    ) -> ResumeDecision:
        pause_id = record["pause_id"]
        revision = initial.kvs[0].mod_revision
        answered = _answered(key)
        view = WatchedRange(gateway, key).start(initial)
        deadline = time.monotonic() + timeout
        next_keepalive = time.monotonic() + PAUSE_LEASE_TTL / 3
        try:
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                if view.wait_until(answered, min(remaining, CANCEL_POLL)):
                    return _decision_of(_record_of(view.get(key)), pause_id)
                if self.run.control.is_cancelled():
                    outcome: Literal["timed_out", "cancelled"] = "cancelled"
                    break
                now = time.monotonic()
                if now >= deadline:
                    outcome = "timed_out"
                    break
                if now >= next_keepalive:
                    next_keepalive = now + PAUSE_LEASE_TTL / 3
                    revision = self._keep_alive(gateway, key, record, revision)
        finally:
            view.stop()
        return self._close(gateway, key, record, revision, outcome)

    def _keep_alive(
        self, gateway: EtcdGateway, key: str, record: dict[str, Any], revision: int
    ) -> int:
        """Keep the pause's lease alive; after a long etcd outage, take a new one."""
        try:
            if gateway.lease_keepalive(record["lease"]) > 0:
                return revision
            record["lease"] = gateway.lease_grant(PAUSE_LEASE_TTL)
            if gateway.txn([put_op(key, json.dumps(record))], [mod_revision_equals(key, revision)]):
                found = gateway.range(key).kvs
                return found[0].mod_revision if found else revision
        except Exception as exc:  # etcd away: the decision cannot come meanwhile either
            log.debug("pause lease keep-alive failed: %s", exc)
        return revision

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
            current = _record_of(gateway.get(key))
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
            "taskctl.pause.result": {True: "true", False: "false", None: "none"}[decision.result],
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


SERVICE_KEY = pytest.StashKey[LivePauses]()


def checkpoint(task: str, timeout: float | None = None) -> ResumeDecision:
    """Pause the running test until a person answers ``taskctl decide PAUSE_ID --result ...``.

    Blocks for at most ``timeout`` seconds (default ``--pause-timeout``);
    with ``--pause-checkpoint-mock`` it answers at once with reason ``Mock``.
    Check ``decision.outcome``: ``timed_out`` and ``cancelled`` carry no result.
    """
    if not isinstance(task, str) or not task.strip():
        raise ValueError("checkpoint task must not be empty")
    item = _ACTIVE_ITEM.get()
    if item is None:
        raise RuntimeError("checkpoint() can only be used while a pytest test is running")
    service = item.config.stash.get(SERVICE_KEY, None)
    if service is None:
        raise RuntimeError("checkpoint() needs the pytest-taskctl plugin (it is disabled)")
    return service.checkpoint(item.nodeid, task, timeout)


@dataclass
class LivePause:
    """The ``live_pause`` fixture: the run id and a checkpoint bound to the test."""

    service: LivePauses
    item: pytest.Item

    @property
    def run_id(self) -> str:
        return self.service.run.settings.run_id

    def checkpoint(self, task: str, timeout: float | None = None) -> ResumeDecision:
        if not isinstance(task, str) or not task.strip():
            raise ValueError("checkpoint task must not be empty")
        return self.service.checkpoint(self.item.nodeid, task, timeout)


# -- the plugin -----------------------------------------------------------------------


def _timeout_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def add_options(parser: pytest.Parser, group: Any) -> None:
    """Register ``--pause-on-failure``, ``--pause-timeout``, ``--pause-checkpoint-mock``."""
    group.addoption(
        "--pause-on-failure", action="store_true", default=False, help=PAUSE_ON_FAILURE_HELP
    )
    group.addoption(
        "--pause-timeout",
        metavar="SECONDS",
        type=_timeout_seconds,
        default=300.0,
        help=PAUSE_TIMEOUT_HELP,
    )
    group.addoption(
        "--pause-checkpoint-mock",
        choices=sorted(RESULT_TOKENS),
        default=None,
        help=PAUSE_MOCK_HELP,
    )


def make_plugin(config: pytest.Config, run: TaskRun) -> object | None:
    """The plugin object to register for this run, or ``None``."""
    service = config.stash[SERVICE_KEY] = LivePauses(config, run)
    return LivePausePlugin(service)


class LivePausePlugin:
    """Hooks and fixtures of live pauses; the work is in :class:`LivePauses`."""

    def __init__(self, service: LivePauses) -> None:
        self.service = service

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        token = _ACTIVE_ITEM.set(item)
        try:
            return (yield)
        finally:
            _ACTIVE_ITEM.reset(token)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.when == "call" and report.failed and item.config.option.pause_on_failure:
            decision = self.service.pause(
                "failure",
                item.nodeid,
                FAILURE_TASK,
                self.service.default_timeout,
                failure=report.longreprtext,
            )
            if decision.failure_reason:
                report.sections.append(
                    ("live pause", f"External failure reason: {decision.failure_reason}")
                )
        return report

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        lines = []
        if config.option.pause_on_failure:
            lines.append(
                f"taskctl: live pause on failure (timeout {self.service.default_timeout:g} s): "
                "list with `taskctl pauses`, answer with `taskctl decide PAUSE_ID`"
            )
        if self.service.mock is not None:
            lines.append(
                f"taskctl: checkpoints answered at once: result {self.service.mock}, reason Mock"
            )
        return lines

    @pytest.fixture
    def live_pause(self, request: pytest.FixtureRequest) -> LivePause:
        """Checkpoints bound to this test: ``live_pause.checkpoint(task=...)``, ``.run_id``."""
        item = request.node
        assert isinstance(item, pytest.Item)
        return LivePause(self.service, item)

    @pytest.fixture
    def pause_run_id(self, live_pause: LivePause) -> str:
        """The id of the run, as ``taskctl pauses --run-id`` takes it."""
        return live_pause.run_id


# -- the answering side: taskctl pauses / taskctl decide ----------------------------------


def _run_ids(gateway: EtcdGateway, prefix: str) -> Iterator[str]:
    """Run ids under the prefix, one small keys-only read per run (results are skipped)."""
    root = runs_root(prefix)
    end = base64.b64encode(prefix_end(root).encode("utf-8", "surrogateescape")).decode()
    cursor = root
    while True:
        response = gateway.call(
            "/kv/range",
            {
                "key": base64.b64encode(cursor.encode("utf-8", "surrogateescape")).decode(),
                "range_end": end,
                "limit": 1,
                "keys_only": True,
            },
        )
        kvs = response.get("kvs") or []
        if not kvs:
            return
        key = base64.b64decode(kvs[0]["key"]).decode("utf-8", "surrogateescape")
        run_id = key[len(root) :].partition("/")[0]
        yield run_id
        cursor = prefix_end(f"{root}{run_id}/")


def list_pauses(
    store: StateStore, run_id: str | None = None, include_all: bool = False
) -> list[dict[str, Any]]:
    """Pauses of one run or of every run, oldest first; only pending ones unless ``include_all``.

    Each is the stored record plus ``state`` (stale when its process died) and
    ``age`` in seconds.
    """
    gateway = store.gateway
    run_ids = [validate_run_id(run_id)] if run_id is not None else _run_ids(gateway, store.prefix)
    now = time.time()
    pauses = []
    for rid in run_ids:
        keys = RunKeys(store.prefix, rid)
        for kv in gateway.range(keys.pauses, prefix_end(keys.pauses)).kvs:
            record = _record_of(kv.value) or {}
            state = effective_state(record, gateway)
            if not include_all and state != "pending":
                continue
            created = record.get("created")
            pauses.append(
                {
                    **record,
                    "pause_id": record.get("pause_id") or kv.key[len(keys.pauses) :],
                    "run_id": rid,
                    "state": state,
                    "recorded_state": record.get("state"),
                    "task": record.get("task"),
                    "nodeid": record.get("nodeid"),
                    "kind": record.get("kind"),
                    "created": created,
                    "age": round(now - created, 3) if isinstance(created, (int, float)) else None,
                }
            )
    pauses.sort(key=lambda pause: pause["created"] or 0)
    return pauses


def _validate_answer(
    record: Mapping[str, Any], failure_reason: str | None, result: str | None, reason: str | None
) -> str | None:
    """Seed 004's checks: failure pauses take --failure-reason, checkpoints --result/--reason."""
    kind = record.get("kind")
    if kind == "failure":
        if result is not None or reason is not None:
            return "--result/--reason are only allowed for checkpoint pauses; got kind=failure"
        return None
    if kind == "checkpoint":
        if failure_reason is not None:
            return "--failure-reason is only allowed for failure pauses; got kind=checkpoint"
        return None
    if failure_reason is not None or result is not None or reason is not None:
        return f"unsupported pause kind for supplied arguments: {kind or 'unknown'}"
    return None


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return f"{user}@{socket.gethostname()}"


def decide(
    store: StateStore,
    pause_id: str,
    *,
    failure_reason: str | None = None,
    result: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Answer a pending pause; returns the decided record.

    ``result`` is ``"true"``, ``"false"`` or ``"none"`` (``None``: not given).
    Raises :class:`PauseError` when the pause is unknown, no longer pending,
    stale, or the arguments do not fit its kind. A transaction on the key's
    revision makes sure that of two people deciding at once only one wins.
    """
    if result is not None and result not in RESULT_TOKENS:
        raise PauseError(f"--result must be true, false or none, not {result!r}")
    key = RunKeys(store.prefix, run_id_of(pause_id)).pause(pause_id)
    gateway = store.gateway
    for _ in range(5):
        found = gateway.range(key).kvs
        if not found:
            raise PauseError(f"pause not found: {pause_id} (see `taskctl pauses -a`)")
        kv = found[0]
        record = _record_of(kv.value) or {}
        state = effective_state(record, gateway)
        if state == "stale":
            raise PauseError(
                f"pause {pause_id} belongs to a dead process and is stale "
                f"(pid {record.get('pid')} on {record.get('host')}); nothing is waiting for it"
            )
        if state != "pending":
            raise PauseError(f"pause {pause_id} is no longer pending: {state}")
        error = _validate_answer(record, failure_reason, result, reason)
        if error is not None:
            raise PauseError(error)
        decided = {
            **record,
            "state": "decided",
            "decided": round(time.time(), 3),
            "decided_by": _who(),
        }
        if record.get("kind") == "failure":
            decided["failure_reason"] = failure_reason
        else:
            decided["result"] = RESULT_TOKENS[result] if result is not None else None
            decided["reason"] = reason
        if gateway.txn(
            [put_op(key, json.dumps(decided))], [mod_revision_equals(key, kv.mod_revision)]
        ):
            return decided
    raise PauseError(f"pause {pause_id} kept changing while deciding; try again")


# -- CLI glue (taskctl pauses / decide), usable before cli.py wires it in ----------------------


class CommandContext(Protocol):
    """The part of ``cli.Context`` the handlers use."""

    args: argparse.Namespace

    @property
    def store(self) -> StateStore: ...

    def say(self, text: str) -> None: ...

    def emit(self, text: str) -> None: ...

    def emit_json(self, data: Any) -> None: ...


def _run_id_type(text: str) -> str:
    try:
        return validate_run_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pauses_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-a", "--all", action="store_true", help="also decided, timed out, cancelled and stale ones"
    )
    parser.add_argument("--run-id", type=_run_id_type, help="only this run's pauses")


def decide_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pause_id", metavar="PAUSE_ID", help="as `taskctl pauses` shows it")
    parser.add_argument(
        "--failure-reason", metavar="TEXT", help="failure pauses: shown in the test's report"
    )
    parser.add_argument(
        "--result", choices=sorted(RESULT_TOKENS), help="checkpoints: what checkpoint() returns"
    )
    parser.add_argument("--reason", metavar="TEXT", help="checkpoints: why")


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def pause_lines(pauses: Sequence[Mapping[str, Any]], with_state: bool) -> list[str]:
    header = ["PAUSE_ID", *(["STATE"] if with_state else []), "AGE", "KIND", "NODEID", "TASK"]
    rows = [header] + [
        [
            str(p["pause_id"]),
            *([str(p["state"])] if with_state else []),
            format_age(p.get("age")),
            str(p.get("kind") or "-"),
            str(p.get("nodeid") or "-"),
            str(p.get("task") or "-"),
        ]
        for p in pauses
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    ]


def cmd_pauses(ctx: CommandContext) -> int:
    args = ctx.args
    pauses = list_pauses(ctx.store, args.run_id, include_all=args.all)
    if getattr(args, "json", False):
        ctx.emit_json(pauses)
        return 0
    if not pauses:
        ctx.say("taskctl: no pauses" if args.all else "taskctl: no pending pauses")
        return 0
    for line in pause_lines(pauses, with_state=args.all):
        ctx.emit(line)
    return 0


def cmd_decide(ctx: CommandContext) -> int:
    args = ctx.args
    try:
        record = decide(
            ctx.store,
            args.pause_id,
            failure_reason=args.failure_reason,
            result=args.result,
            reason=args.reason,
        )
    except PauseError as exc:
        ctx.say(f"taskctl: {exc}")
        return 1
    if getattr(args, "json", False):
        ctx.emit_json(record)
        return 0
    if record.get("kind") == "failure":
        what = (
            f"failure reason {record['failure_reason']!r}"
            if record.get("failure_reason")
            else "no failure reason"
        )
    else:
        token = {True: "true", False: "false", None: "none"}[record.get("result")]
        what = f"result {token}" + (
            f", reason {record['reason']!r}" if record.get("reason") else ""
        )
    ctx.emit(
        f"decided {record.get('pause_id')} ({record.get('kind')}, {record.get('nodeid')}): {what}"
    )
    return 0


def cli_commands() -> list[Any]:
    """``taskctl pauses`` and ``taskctl decide`` as ``cli.Command`` entries."""
    from .cli import Command

    return [
        Command(
            "pauses",
            help="live pauses waiting for a decision (-a: all), oldest first",
            handler=cmd_pauses,
            arguments=pauses_arguments,
            prints_data=True,
        ),
        Command(
            "decide",
            help="answer a live pause: --failure-reason, or --result/--reason for a checkpoint",
            handler=cmd_decide,
            arguments=decide_arguments,
            prints_data=True,
        ),
    ]
