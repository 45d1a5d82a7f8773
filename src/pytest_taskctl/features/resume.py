"""Resume an interrupted run (seed 002), and the lease every run holds.

Every run records each test's outcome when its teardown report arrives:

* in etcd, ``<run>/results/<encoded nodeid>`` (JSON with the full node id),
  queued on the run's :class:`~pytest_taskctl.etcd.writer.KeyWriter` -- the test
  never waits for etcd, the write lands within a few tens of milliseconds;
* in ``logs/<run_id>/results.jsonl`` (one line per test, flushed), the
  fallback when etcd cannot be reached at resume time.

``pytest --run-id ID --resume`` deselects the tests whose last recorded
outcome passed and runs the rest (failed, errored, skipped, never run). A
result that never reached the record means the test runs again. A run
*without* ``--resume`` starts the run over: earlier results of the id are
dropped.

Every run with etcd also owns its id through ``<run>/lease`` (value: host,
pid; see :mod:`pytest_taskctl.ownership`), released at the end, so a second
process cannot start or resume a run that is still alive elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest

from ..etcd.gateway import (
    EtcdGateway,
    prefix_end,
)
from ..keys import nodeid_identity
from ..outcome import TestOutcome
from ..ownership import LEASE_TTL, RunOwnership, owner_alive
from ..process import process_identity
from ..records import json_object

if TYPE_CHECKING:
    from ..run import TaskRun

log = logging.getLogger("pytest_taskctl.plugin")

RESULTS_FILE = "results.jsonl"


class RunStillRunning(Exception):
    """The run id belongs to a process that is still alive (its lease is held)."""


# -- keys and identities ------------------------------------------------------------


def result_record(nodeid: str, outcome: TestOutcome, attempt: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "nodeid": nodeid,
        "outcome": outcome.word,
        "status": outcome.status,
        "attempt": attempt,
        "duration": round(outcome.duration, 6),
        "ended": round(time.time(), 3),
    }
    identity = nodeid_identity(nodeid)
    if identity is not nodeid:
        # Keep values small: a batched txn of 100 results must stay far below etcd's 1.5 MiB.
        record["nodeid"] = nodeid[:200] + "..."
        record["sha256"] = identity.removeprefix("sha256:")
    return record


def passed_identities(records: Sequence[Mapping[str, Any]]) -> set[str]:
    """Identities of the tests whose latest record passed (later records win)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for record in records:
        sha = record.get("sha256")
        identity = f"sha256:{sha}" if isinstance(sha, str) else record.get("nodeid")
        if isinstance(identity, str):
            latest[identity] = record
    return {identity for identity, record in latest.items() if record.get("status") == "pass"}


# -- the local record ---------------------------------------------------------------


class LocalRecord:
    """``logs/<run_id>/results.jsonl``: attempt lines and result lines, appended and flushed.

    Flushed, not fsynced: a SIGKILL loses nothing written so far, a power cut
    may lose the last lines -- and a lost result only means the test runs again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def read(self) -> tuple[int, list[dict[str, Any]]]:
        """``(attempts so far, result records)``; a torn last line is ignored."""
        attempts, results = 0, []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return 0, []
        for line in lines:
            record = json_object(line)
            if record is None:
                continue
            if record.get("type") == "attempt":
                attempts = max(attempts, int(record.get("attempt", 0) or 0))
            elif record.get("type") == "result":
                results.append(record)
        return attempts, results

    def open(self, attempt: int, resume: bool) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)
            return
        self.append([{"type": "attempt", "attempt": attempt, "started": round(time.time(), 3)}])

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                self._file.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# -- the plugin -----------------------------------------------------------------------


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
        self.lease: RunOwnership | None = None
        self.recording = False  # results are recorded once the run has started
        self.etcd_ok = False  # the run's history was read from etcd
        self.attempt = 1
        self.source = ""  # where earlier results came from: "etcd", "local", or "" (none)
        self.earlier_results = 0
        self._passed: set[str] | None = None
        self.deselected = 0
        self.to_run = 0
        self.nothing_left = False
        self.counts = {"passed": 0, "failed": 0, "skipped": 0}
        self._lock = threading.Lock()  # counts, to_run, the entry: tests end on several threads
        #: Earlier attempts (from the previous meta, --resume) and this attempt's entry,
        #: which is replaced, never mutated: the publisher may be serializing it.
        self._earlier_attempts: list[dict[str, Any]] = []
        self._entry: dict[str, Any] | None = None

    # -- start: lease, history, attempt --------------------------------------------------

    def pytest_taskctl_run_starting(
        self, run: TaskRun, previous_meta: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """Runs in ``TaskRun.start`` before anything is written: may refuse the run."""
        if not self.records:
            return None
        earlier: list[dict[str, Any]] = []
        if run.gateway is not None:
            try:
                previous_meta, earlier = self._take_run(run.gateway)
                self.etcd_ok = True
            except RunStillRunning as exc:
                raise pytest.UsageError(str(exc)) from None  # exit 4, nothing written
            except Exception as exc:  # etcd went away between connect and now
                log.warning("taskctl: could not read the run's history from etcd: %s", exc)
        if self.resume:
            local_attempts, local_results = self.local.read()
            if self.etcd_ok and previous_meta is not None:
                self.source = "etcd"
                self.attempt = _attempt_of(previous_meta) + 1
            elif local_attempts:  # etcd unreachable, or it never saw this run
                self.source, earlier = "local", local_results
                self.attempt = local_attempts + 1
            self._passed = passed_identities(earlier)
            self.earlier_results = len(earlier)
        self.local.open(self.attempt, self.resume)
        self.recording = True
        entry = {
            "attempt": self.attempt,
            "started": round(time.time(), 3),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "resume": self.resume,
            "status": "RUNNING",
            "counts": dict(self.counts),
        }
        if self.source == "etcd" and previous_meta is not None:
            self._earlier_attempts = _closed_attempts(previous_meta)
        self._entry = entry
        tracer = run.tracer
        if tracer is not None:
            tracer.session_span.set_attribute("pytest.run.attempt", self.attempt)
            tracer.session_span.set_attribute("pytest.run.resumed", self.resume)
        return {"attempt": self.attempt, "attempts": [*self._earlier_attempts, entry], "left": None}

    def _take_run(self, gateway: EtcdGateway) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Take the lease (refusing a live run); return the previous meta and, with --resume,
        the earlier results."""
        key = self.keys.lease
        for _ in range(3):
            # "lease" < "meta" and no other key of the layout sorts between them.
            found = {kv.key: kv for kv in gateway.range(key, self.keys.meta + "\0").kvs}
            holder = found.get(key)
            owner = json_object(holder.value) if holder is not None else None
            if holder is not None and owner_alive(owner or {}):
                raise RunStillRunning(
                    _still_running_message(self.keys.run_id, owner or {}, self.resume)
                )
            me = {**process_identity(), "run_id": self.keys.run_id, "started": time.time()}
            self.lease = RunOwnership.acquire(gateway, key, me, holder)
            if self.lease is not None:
                break
        else:
            raise RunStillRunning(
                f"run {self.keys.run_id} was started by another process at the same moment; "
                "refusing to run it twice"
            )
        meta_kv = found.get(self.keys.meta)
        previous_meta = json_object(meta_kv.value) if meta_kv is not None else None
        if not self.resume:
            if previous_meta is not None:
                gateway.delete(self.keys.results, prefix=True)  # a new run starts over
            return previous_meta, []
        results = gateway.range(self.keys.results, prefix_end(self.keys.results)).kvs
        records = [r for r in (json_object(kv.value) for kv in results) if r is not None]
        return previous_meta, records

    def pytest_taskctl_run_closing(self, run: TaskRun) -> None:
        self.local.close()  # normally done when the run finishes; this is the no-session path
        if self.lease is not None:
            self.lease.release()

    # -- collection ----------------------------------------------------------------------

    def _passed_set(self) -> set[str]:
        if self._passed is None:  # an xdist worker: read what the controller loaded
            self._passed = set()
            gateway = self.run.gateway
            if gateway is not None:
                try:
                    kvs = gateway.range(self.keys.results, prefix_end(self.keys.results)).kvs
                    records = [r for r in (json_object(kv.value) for kv in kvs) if r]
                    self._passed = passed_identities(records)
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
                self._update_attempt(left=self.to_run - self.counts["passed"], to_run=self.to_run)
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
        return [
            f"taskctl: resume: attempt {self.attempt} of run {run_id}; "
            f"{self.earlier_results} results from earlier attempts in etcd"
        ]

    def pytest_report_collectionfinish(self, config: pytest.Config) -> list[str]:
        if not self.resume:
            return []
        return [f"resume: {self.deselected} passed earlier, {self.to_run} to run"]

    # -- results -----------------------------------------------------------------------

    def pytest_taskctl_test_finished(self, run: TaskRun, nodeid: str, outcome: TestOutcome) -> None:
        """Queue the test's result."""
        if not self.records:
            return
        with self._lock:
            self.counts[outcome.counter] += 1
            if self._entry is not None:
                left = self.to_run - self.counts["passed"] if self.to_run else None
                self._update_attempt(left=left, counts=dict(self.counts))
        if self.recording:
            # The writer's next transaction (within tens of milliseconds) makes it durable
            # in etcd; the local record is appended here, one short write per test.
            record = result_record(nodeid, outcome, self.attempt)
            if self.run.writer is not None:
                key = self.keys.result(nodeid)
                self.run.writer.put(key, json.dumps(record, ensure_ascii=False))
            self.local.append([{"type": "result", **record}])

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
        left = self.to_run - self.counts["passed"]
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


def _attempt_of(meta: Mapping[str, Any]) -> int:
    attempt = meta.get("attempt")
    if isinstance(attempt, int) and attempt > 0:
        return attempt
    attempts = meta.get("attempts")
    return len(attempts) if isinstance(attempts, list) and attempts else 1


def _closed_attempts(previous_meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Earlier attempts from the previous meta; one that never ended was interrupted."""
    attempts = previous_meta.get("attempts")
    if not isinstance(attempts, list) or not attempts:
        # A run recorded before attempts existed: one attempt, from its meta.
        attempts = [
            {
                "attempt": 1,
                "started": previous_meta.get("started"),
                "host": previous_meta.get("host"),
                "pid": previous_meta.get("pid"),
            }
        ]
    closed = [dict(a) for a in attempts if isinstance(a, dict)]
    if closed:
        last = closed[-1]
        status = previous_meta.get("status")
        if not last.get("ended") or last.get("status") in (None, "RUNNING", "PAUSED"):
            last["status"] = status if status not in (None, "RUNNING", "PAUSED") else "INTERRUPTED"
            if isinstance(previous_meta.get("counts"), dict) and "counts" not in last:
                counts = previous_meta["counts"]
                last["counts"] = {k: counts.get(k, 0) for k in ("passed", "failed", "skipped")}
    return closed


def _still_running_message(run_id: str, owner: Mapping[str, Any], resume: bool) -> str:
    started = owner.get("started")
    where = f"{owner.get('host', '?')} (pid {owner.get('pid', '?')})"
    since = (
        f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
        if isinstance(started, (int, float))
        else ""
    )
    what = "--resume of" if resume else "starting"
    return (
        f"taskctl: refusing {what} run {run_id}: it is still running on {where}{since} "
        f"-- its lease {owner.get('lease', '?')} in etcd is alive. Wait for it to end, or "
        f"cancel it (taskctl cancel {run_id}); a killed run frees its id within {LEASE_TTL} s."
    )
