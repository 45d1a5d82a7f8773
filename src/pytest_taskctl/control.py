"""Pause gate, cancel and progress of one run, driven by the watched flags.

Nothing here talks to etcd on the caller's thread: flags come from the
:class:`~pytest_taskctl.etcd.watch.WatchedRange`, status and progress go out
through the :class:`~pytest_taskctl.etcd.writer.KeyWriter`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .etcd.watch import WatchedRange
from .etcd.writer import KeyWriter
from .keys import RunKeys, flag_is_true

log = logging.getLogger("pytest_taskctl.plugin")

CANCEL_REASON = "taskctl: run cancelled"
PROGRESS_INTERVAL = 0.25


class RunControl:
    """The pause gate before each test, cancel, status and the ``meta`` record.

    Status is ``PAUSED`` exactly while at least one thread waits at the gate
    and no test is running (with one thread: while the run is held).
    """

    def __init__(
        self,
        keys: RunKeys,
        view: WatchedRange | None,
        writer: KeyWriter | None,
        *,
        publish: bool = True,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.keys = keys
        self.view = view
        self.writer = writer if publish else None
        self.notify = notify or (lambda text: None)
        self.cancel_seen = False
        self.meta: dict[str, Any] = {}
        self.counts = {"passed": 0, "failed": 0, "skipped": 0}
        self.total = 0
        self._running: dict[int, str] = {}
        self._waiting = 0
        self._status = ""
        self._status_listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._meta_lock = threading.Lock()
        self._stopped = threading.Event()
        #: (paused, cancelled) as the view last showed them, for :meth:`_flags_changed`.
        self._flags_seen = (False, False)
        #: Features' meta fields that change with every test, made with the record.
        self._meta_sources: list[Callable[[], Mapping[str, Any]]] = []
        #: A lazy meta write is queued and not yet made: a new change needs no new one.
        self._progress_queued = False
        if view is not None:
            self._flags_seen = self._flags(view.snapshot())
            view.add_listener(self._flags_changed)

    @property
    def enabled(self) -> bool:
        return self.view is not None

    # -- flags ------------------------------------------------------------------

    def _flags(self, values: Mapping[str, bytes]) -> tuple[bool, bool]:
        return (
            flag_is_true(values.get(self.keys.paused)),
            flag_is_true(values.get(self.keys.cancelled)),
        )

    def _flags_changed(self, changes: Mapping[str, bytes | None], revision: int) -> None:
        """Log in the run's log when the view takes in a pause, resume or cancel.

        The line is written after the view holds the new value, so from the
        moment it is in ``pytest.log`` the gate acts on the flag: a person (or a
        test) that waits for it knows the request arrived, however loaded the
        machine is. Called on the view's thread.
        """
        assert self.view is not None
        paused, cancelled = self._flags(self.view.snapshot())
        was_paused, was_cancelled = self._flags_seen
        self._flags_seen = (paused, cancelled)
        if paused != was_paused:
            what = "pause requested" if paused else "resume requested"
            log.info("%s through etcd (%s) at revision %d", what, self.keys.paused, revision)
        if cancelled != was_cancelled:
            what = "cancel requested" if cancelled else "cancel withdrawn"
            log.info("%s through etcd (%s) at revision %d", what, self.keys.cancelled, revision)

    def is_cancelled(self) -> bool:
        if self.view is None:
            return False
        if flag_is_true(self.view.get(self.keys.cancelled)):
            self.cancel_seen = True
        return self.cancel_seen

    def gate(self, nodeid: str) -> bool:
        """Hold while paused; ``False`` when the run is cancelled (skip the test)."""
        if self.view is None:
            self._test_started(nodeid)
            return True
        if self.is_cancelled() or self._stopped.is_set():
            return False
        if flag_is_true(self.view.get(self.keys.paused)):
            self._hold(nodeid)
            if self.is_cancelled() or self._stopped.is_set():
                return False  # cancelled, or the run is ending (Ctrl-C) while held
        self._test_started(nodeid)
        return True

    def _hold(self, nodeid: str) -> None:
        assert self.view is not None
        with self._lock:
            self._waiting += 1
            self._refresh_status()
        log.warning("run paused through etcd (%s) before %s", self.keys.paused, nodeid)
        self.notify(
            f"taskctl: PAUSED before {nodeid}: running tests finish, no new test starts; "
            f"resume with: etcdctl del {self.keys.paused}  (or taskctl resume {self.keys.run_id})"
        )
        self.publish_progress()
        started = time.monotonic()

        def released(values: Mapping[str, bytes]) -> bool:
            paused, cancelled = self._flags(values)
            return cancelled or not paused

        try:
            self.view.wait_until(released)
        finally:
            with self._lock:
                self._waiting -= 1
                self._refresh_status()
        waited = time.monotonic() - started
        if self.is_cancelled():
            log.warning("run cancelled through etcd (%s) while paused", self.keys.cancelled)
            self.notify(f"taskctl: cancelled while paused ({waited:.1f} s); skipping the rest")
        elif not self._stopped.is_set():
            log.warning("run resumed after %.1f s; next: %s", waited, nodeid)
            self.notify(f"taskctl: resumed after {waited:.1f} s")

    # -- progress ---------------------------------------------------------------

    def _test_started(self, nodeid: str) -> None:
        with self._lock:
            self._running[threading.get_ident()] = nodeid
        self.publish_progress()

    def test_finished(self, counter: str | None) -> None:
        """Count a finished test (``counter``: passed/failed/skipped) and free its slot."""
        with self._lock:
            self._running.pop(threading.get_ident(), None)
            if counter is not None:
                self.counts[counter] += 1
            if self._waiting:
                self._refresh_status()
        self.publish_progress()

    def counted(self) -> dict[str, int]:
        """How many tests passed, failed and were skipped so far (a copy)."""
        with self._lock:
            return dict(self.counts)

    def progress(self) -> dict[str, Any]:
        with self._lock:
            done = sum(self.counts.values())
            return {
                "counts": {
                    **self.counts,
                    "remaining": max(0, self.total - done),
                    "total": self.total,
                },
                "current": sorted(self._running.values()),
            }

    def update_meta(self, **fields: Any) -> None:
        """Change fields of the meta record; published with the next progress update.

        Features (resume, live pause) call this from test threads while the
        writer's thread serializes ``meta``: the lock keeps both consistent.
        """
        with self._meta_lock:
            self.meta.update(fields)
        self.publish_progress()

    def add_meta_source(self, source: Callable[[], Mapping[str, Any]]) -> None:
        """Fields that change with every test (a feature's counts), read when the meta
        record is made on the writer's thread, not built on the test's thread."""
        with self._meta_lock:
            self._meta_sources.append(source)

    def publish_progress(self, force: bool = False, status: str | None = None) -> None:
        """Queue the meta record (and ``status`` with it, in the same transaction).

        The record is made on the writer's thread when its transaction is built,
        at most every ``PROGRESS_INTERVAL`` unless ``force``d: a test only queues
        it, and only when no queued record is waiting to be made (that one will
        show this change too).
        """
        if self.writer is None:
            return
        if status is None:
            if self._progress_queued and not force:
                return
            self._progress_queued = True
            interval = 0.0 if force else PROGRESS_INTERVAL
            self.writer.put_lazy(self.keys.meta, self._meta_json, interval=interval)
        else:
            self.writer.put_many({self.keys.meta: self._meta_json, self.keys.status: status})

    def _meta_json(self) -> str:
        self._progress_queued = False  # before reading: a later change queues a new record
        # Sources take their own locks, and their features call update_meta holding
        # them: a source is never called inside _meta_lock (that order deadlocked).
        with self._meta_lock:
            sources = list(self._meta_sources)
        fields = [source() for source in sources]
        with self._meta_lock:
            for changed in fields:
                self.meta.update(changed)
            self.meta.update(self.progress(), updated=time.time())
            return json.dumps(self.meta, sort_keys=True)

    # -- status -----------------------------------------------------------------

    def _refresh_status(self) -> None:
        """Called with the lock held; writes PAUSED/RUNNING when it changes."""
        if self._status not in ("", "RUNNING", "PAUSED"):
            return
        paused = self.view is not None and flag_is_true(self.view.get(self.keys.paused))
        status = "PAUSED" if paused and self._waiting and not self._running else "RUNNING"
        self._set_status(status)

    def _set_status(self, status: str) -> None:
        if status == self._status:
            return
        self._status = status
        if self.writer is not None:
            self.writer.put(self.keys.status, status)
        for listener in self._status_listeners:
            try:
                listener(status)
            except Exception:
                log.exception("status listener failed")

    def add_status_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(status)`` when this process's PAUSED/RUNNING changes.

        For a feature that publishes the status itself (``--join``: the run is
        PAUSED once every process is). Called with the control's lock held:
        the listener must only queue work, never wait.
        """
        self._status_listeners.append(listener)

    @property
    def status(self) -> str:
        return self._status

    @property
    def busy(self) -> bool:
        """A test of this process is between the gate and its end.

        Without the lock (one read of a dict, atomic under the GIL): status
        listeners ask it, and they are called with the lock held.
        """
        return bool(self._running)

    def start(self, meta: Mapping[str, Any]) -> None:
        self.meta = dict(meta)
        with self._lock:
            self._status = "RUNNING"
        self.publish_progress(force=True, status="RUNNING")

    def stop(self) -> None:
        """No new test passes the gate."""
        self._stopped.set()

    def finish(self, status: str, extra: Mapping[str, Any]) -> None:
        """The end status and the final meta, written together."""
        self.stop()
        with self._lock:
            self._status = status
        with self._meta_lock:
            self.meta.update(extra, status=status, ended=time.time())
        self.publish_progress(force=True, status=status)
