"""The run's ``PAUSED`` status when its processes are joined.

A plain run writes ``PAUSED`` from its gate: it is the only process. Joined
processes do not see each other's gates, yet the contract is the same: the
run is ``PAUSED`` once no test runs anywhere and none will start. So each
process says it for itself -- ``queue/paused/<worker>``, on its own lease so
that it goes with a dead process -- while it runs no test under the flag (it
waits at the gate, or idles waiting for requeues), and every process decides
the run's status from its mirror of ``queue/``, where those keys and the
``alive`` keys are:

* ``PAUSED`` when the flag is set and every live process is paused; the
  write is guarded by the status still being ``RUNNING``, the flag still
  holding the value seen and every one of those paused keys still existing,
  so a mirror that lags cannot write it while a test runs somewhere;
* ``RUNNING`` when the flag is cleared, guarded by the status being
  ``PAUSED``, so it never overwrites an end status.

Each process decides again on every change of what it sees (the flag, a
process coming or going, a paused key), so the status follows the last
state whichever process's write lands last. A process that arrives during a
pause is alive and not paused while it collects: a run already ``PAUSED``
stays so (no test runs before its gate, and ``RUNNING`` is written only
once the flag is cleared), one not yet ``PAUSED`` becomes so when the
newcomer too waits at its gate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ...etcd.gateway import value_equals
from ...etcd.guarded import GuardedWrite
from ...etcd.writer import KeyWriter
from ...keys import flag_is_true
from .layout import JoinKeys, key_exists

if TYPE_CHECKING:
    from ...control import RunControl
    from ...etcd.watch import WatchedRange
    from .queue import WorkQueue

log = logging.getLogger("pytest_taskctl.plugin")

#: Paused keys checked in the PAUSED write; beyond this many processes, the
#: write trusts the mirror (a guarded write must fit one transaction).
MAX_CHECKED = 64

#: ``(alive, paused)`` workers as the queue's mirror shows them now.
Members = Callable[[], tuple[frozenset[str], frozenset[str]]]


class JoinedPause:
    """This process's paused key, and its part in the run's PAUSED/RUNNING status."""

    def __init__(
        self,
        keys: JoinKeys,
        worker_id: str,
        writer: KeyWriter,
        flag: Callable[[], bytes | None],
        members: Members,
        lease_id: Callable[[], int],
        idle: Callable[[], bool],
        on_change: Callable[[], None],
    ) -> None:
        self.keys = keys
        self.worker_id = worker_id
        self.writer = writer
        self._flag = flag
        self._members = members
        self._lease_id = lease_id
        self._idle = idle
        self._on_change = on_change
        self._held = False
        #: This process runs no test under the flag (what our paused key says).
        self.paused = False
        #: The lease our paused key was put with.
        self._key_lease = 0
        self._seen: tuple[bytes | None, frozenset[str], frozenset[str]] | None = None
        self._stopped = False
        self._lock = threading.Lock()

    # -- this process -------------------------------------------------------------

    def held(self, status: str) -> None:
        """The control's status changed: ``PAUSED`` while our test thread waits at the gate."""
        with self._lock:
            self._held = status == "PAUSED"
        self.update()

    def update(self) -> None:
        """Write or delete our paused key when what it says changed.

        Idle counts as paused under the flag: no test runs here, and a test
        claimed meanwhile waits at the gate.
        """
        # Read before our lock: they take other locks (never one inside ours).
        idle_and_flagged = self._idle() and flag_is_true(self._flag())
        with self._lock:
            paused = not self._stopped and (self._held or idle_and_flagged)
            if paused == self.paused:
                return
            self.paused = paused
            if paused:
                self._put_key()
            else:
                self.writer.delete(self.keys.paused_worker(self.worker_id))
        self._on_change()

    def _put_key(self) -> None:
        """Called with the lock held."""
        self._key_lease = self._lease_id()
        self.writer.put(self.keys.paused_worker(self.worker_id), "1", self._key_lease)

    # -- the run ------------------------------------------------------------------

    def decide(self) -> None:
        """Write the run's status if what we see calls for it (a guarded write)."""
        flag = self._flag()
        alive, paused = self._members()
        with self._lock:
            if self.paused and not self._stopped and self._lease_id() != self._key_lease:
                self._put_key()  # our lease was renewed: the key went with the old one
            seen = (flag, alive, paused)
            if self._stopped or seen == self._seen:
                return
            self._seen = seen
            status = self.keys.run.status
            if flag is None or not flag_is_true(flag):
                self.writer.write_guarded([value_equals(status, "PAUSED")], {status: "RUNNING"})
                return
            if not alive or not alive <= paused:
                return
            compare = [value_equals(status, "RUNNING"), value_equals(self.keys.run.paused, flag)]
            compare += [
                key_exists(self.keys.paused_worker(worker))
                for worker in sorted(alive)[:MAX_CHECKED]
            ]
            self.writer.write_guarded(compare, {status: "PAUSED"}, on_done=_told)

    def attach(self, control: RunControl, view: WatchedRange, queue: WorkQueue) -> JoinedPause:
        """Follow our gate's status, the flags and the queue's mirror from now on."""

        def flags_changed(changes: Mapping[str, bytes | None], revision: int) -> None:
            self.update()
            self.decide()

        control.add_status_listener(self.held)
        view.add_listener(flags_changed)
        queue.listeners.append(self.decide)
        self.update()
        self.decide()
        return self

    def stop(self) -> None:
        """No more writes: the process leaves (its lease takes the paused key with it)."""
        with self._lock:
            self._stopped = True


def _told(write: GuardedWrite) -> None:
    if write.written:
        log.info("join: every process waits at the pause gate: the run is PAUSED")
