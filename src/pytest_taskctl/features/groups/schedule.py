"""When each test may start: one test at a time per group, up to N at once.

Pure bookkeeping over test indexes and group keys (no pytest objects), so it
can be tested and reasoned about without running tests.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from .plan import GroupKey


class Schedule:
    """Which test may start next, for any number of worker threads.

    A test may start when it is first in line in every group it belongs to
    and no test of those groups is running; among those, the earliest in
    collection order starts first. The next test of a group is known as soon
    as the previous one ends, so N threads run N tests whenever N tests may
    run (the original plugin needed the test after the next one and ran N-1).
    A test that must run alone waits for the running ones to end, and nothing
    starts beside it.

    Tests are *lined up* before they may start: all of them at once (the
    default), or a few at a time with :meth:`line_up` when another source
    hands them out (``--join`` claims them from the run's queue). Each group's
    line is in line-up order, so the test lined up first among those waiting
    can always start once the running ones end: nothing waits forever.
    ``on_line_up`` hears of every test before it can start (the set-up state
    counts the tests that still need a module or the session).
    """

    def __init__(
        self,
        keys_of: Sequence[tuple[GroupKey, ...]],
        alone: Sequence[bool],
        lined_up: Iterable[int] | None = None,
        on_line_up: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._keys = keys_of
        self._alone = list(alone)
        self._on_line_up = on_line_up
        self._lines: dict[GroupKey, deque[int]] = {}
        self._ready: list[int] = []
        self._running: set[int] = set()
        self._alone_running = False
        self._left = 0
        self._stopping = False
        self._cond = threading.Condition()
        self._changes = 0  # takes, ends and line-ups: a waiting caller may want to act on them
        self.most_running = 0
        self.line_up(range(len(keys_of)) if lined_up is None else lined_up)

    def _first_in_line(self, index: int) -> bool:
        return all(self._lines[key][0] == index for key in self._keys[index])

    def line_up(self, indexes: Iterable[int], alone: bool = False) -> None:
        """Add tests after those already waiting in their groups; ``alone``: nothing beside them."""
        added = list(indexes)
        if not added:
            return
        if self._on_line_up is not None:
            self._on_line_up(added)
        with self._cond:
            for index in added:
                self._alone[index] = self._alone[index] or alone
                for key in self._keys[index]:
                    self._lines.setdefault(key, deque()).append(index)
                if self._first_in_line(index):
                    heapq.heappush(self._ready, index)
            self._left += len(added)
            self._changed()

    @property
    def waiting(self) -> int:
        """Tests lined up and not started."""
        with self._cond:
            return self._left - len(self._running)

    @property
    def startable(self) -> bool:
        """Whether a test could start right now."""
        with self._cond:
            return self._startable() is not None

    @property
    def idle(self) -> bool:
        """Nothing lined up and nothing running."""
        with self._cond:
            return self._left == 0

    @property
    def stopped(self) -> bool:
        with self._cond:
            return self._stopping

    def next_after(self, index: int) -> int | None:
        """The test after ``index`` in its first group (pytest's ``nextitem``), if any."""
        keys = self._keys[index]
        if not keys:
            return None
        with self._cond:
            line = self._lines[keys[0]]
            try:
                position = line.index(index)
            except ValueError:
                return None
            return line[position + 1] if position + 1 < len(line) else None

    def _startable(self) -> int | None:
        if self._stopping or not self._ready or self._alone_running:
            return None
        index = self._ready[0]
        return index if not self._alone[index] or not self._running else None

    def _changed(self) -> None:
        self._changes += 1
        self._cond.notify_all()

    def take(self, timeout: float | None = None) -> int | None:
        """Block until a test may start and claim it; ``None`` when none is left to start.

        With ``timeout`` (a caller that lines tests up itself), also ``None``
        after that long, or as soon as another thread took, ended or lined up a
        test and still none may start here: the caller may want to line up more.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            seen = self._changes
            while True:
                if self._stopping:
                    return None
                index = self._startable()
                if index is not None:
                    heapq.heappop(self._ready)
                    self._running.add(index)
                    self._alone_running = self._alone[index]
                    self.most_running = max(self.most_running, len(self._running))
                    self._changed()
                    return index
                if not self._running:
                    if self._left:
                        raise RuntimeError(f"taskctl groups: {self._left} tests can never start")
                    if deadline is None:
                        return None
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._changes != seen:
                    return None
                self._cond.wait(remaining)

    def done(self, index: int) -> None:
        """``index`` ended: the next test of each of its groups may become ready."""
        with self._cond:
            self._running.discard(index)
            self._alone_running = False
            self._left -= 1
            for key in self._keys[index]:
                line = self._lines[key]
                line.popleft()
                if line and self._first_in_line(line[0]):
                    heapq.heappush(self._ready, line[0])
            self._changed()

    def stop(self) -> None:
        """Start nothing more; running tests end normally."""
        with self._cond:
            self._stopping = True
            self._changed()
