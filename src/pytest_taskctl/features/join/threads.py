"""``--join --thread N``: the process's worker threads take their tests from the run's queue.

The group runner (:mod:`..groups`) runs the N threads and keeps groups apart
on its :class:`~..groups.schedule.Schedule`; this feeds that schedule with the
tests this process claims, through the same :class:`~.queue.WorkQueue` and
the same process lease as a single-threaded joined process. Threads never
claim for themselves: a claim belongs to the process, and whichever of its
threads is free runs the test.

* **When to claim.** A thread claims when fewer tests wait here than there
  are threads (each has a next one, and a module's fixtures are not torn
  down between two of its tests), or when none of the waiting tests may start
  (they wait behind running tests of their groups) and fewer than
  ``threads x chunk`` wait. The chunk shrinks as the queue empties, so near
  the end a process holds no more than its threads can start.
* **Groups act within the process.** Tests of one group that this process
  holds run one at a time, in claim order; another process may run tests of
  the same group meanwhile. What a group protects (``sys.stdout``,
  ``os.environ``, module globals) is not shared between processes.
* **Deaths.** Each test is marked as started before it runs
  (:meth:`~.queue.WorkQueue.mark_started`), so a dead process's running tests
  are known; a test charged with a death before runs alone here, so if its
  process dies again, the death is its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .claims import Claim
from .queue import IDLE_POLL, WorkQueue

if TYPE_CHECKING:
    from ..groups.schedule import Schedule


class ThreadFeed:
    """What the group runner's threads call for their next test (:meth:`take`)."""

    def __init__(
        self,
        queue: WorkQueue,
        schedule: Schedule,
        threads: int,
        *,
        started: Callable[[Claim], None],
        stopping: Callable[[], bool],
        set_state: Callable[[str], None],
    ) -> None:
        self.queue = queue
        self.schedule = schedule
        self.threads = threads
        self._started = started
        self._stopping = stopping
        self._set_state = set_state
        self._claims: dict[int, Claim] = {}
        self._claim_lock = threading.Lock()

    def take(self) -> int | None:
        """The index of the next test for this thread; ``None`` when the thread is done.

        Done: the schedule was stopped (``-x``, interrupt), or nothing is held
        here and the queue is finished or the run cancelled (held tests are
        still handed out; the gate skips them, and they are acknowledged).
        """
        schedule = self.schedule
        while True:
            if not self._stopping():
                self._claim_while_short()
            index = schedule.take(IDLE_POLL)
            if index is not None:
                if self._start(index):
                    self._set_state("RUNNING")
                    return index
                continue
            if schedule.stopped:
                return None
            if schedule.idle:
                if self._stopping() or self.queue.finished:
                    return None
                self._set_state("IDLE")  # others still run tests; theirs may come back

    def _short(self) -> bool:
        waiting = self.schedule.waiting
        if waiting < self.threads:
            return True
        most = self.threads * self.queue.chunk_size(self.queue.next_index)
        return waiting < most and not self.schedule.startable

    def _claim_while_short(self) -> None:
        if not self._claim_lock.acquire(blocking=False):
            return  # another thread is claiming; what it gets is lined up for all
        try:
            while self._short():
                claims = self.queue.claim()
                if not claims:
                    return
                for claim in claims:
                    self._claims[claim.index] = claim
                fresh = [claim.index for claim in claims if not claim.deaths]
                self.schedule.line_up(fresh)
                self.schedule.line_up([c.index for c in claims if c.deaths], alone=True)
        finally:
            self._claim_lock.release()

    def _start(self, index: int) -> bool:
        """Mark the claim as started; ``False`` (and the test is dropped) when it is not ours."""
        claim = self.queue.mark_started(self._claims.pop(index))
        if claim is None:
            self.schedule.done(index)  # someone else runs it; its module stays set up until the end
            return False
        self._started(claim)
        return True
