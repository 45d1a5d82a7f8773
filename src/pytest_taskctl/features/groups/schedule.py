"""When each test may start: one test at a time per group, up to N at once.

Pure bookkeeping over test indexes and group keys (no pytest objects), so it
can be tested and reasoned about without running tests.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Sequence

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
    """

    def __init__(self, keys_of: Sequence[tuple[GroupKey, ...]], alone: Sequence[bool]) -> None:
        self._keys = keys_of
        self._alone = alone
        self._lines: dict[GroupKey, deque[int]] = {}
        for index, keys in enumerate(keys_of):
            for key in keys:
                self._lines.setdefault(key, deque()).append(index)
        self._ready = [index for index in range(len(keys_of)) if self._first_in_line(index)]
        self._running: set[int] = set()
        self._alone_running = False
        self._left = len(keys_of)
        self._stopping = False
        self._cond = threading.Condition()
        self.most_running = 0

    def _first_in_line(self, index: int) -> bool:
        return all(self._lines[key][0] == index for key in self._keys[index])

    def next_after(self, index: int) -> int | None:
        """The test after ``index`` in its first group (pytest's ``nextitem``), if any."""
        keys = self._keys[index]
        if not keys:
            return None
        line = self._lines[keys[0]]
        try:
            position = line.index(index)
        except ValueError:
            return None
        return line[position + 1] if position + 1 < len(line) else None

    def take(self) -> int | None:
        """Block until a test may start and claim it; ``None`` when none is left to start."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if self._ready and not self._alone_running:
                    index = self._ready[0]
                    if not self._alone[index] or not self._running:
                        heapq.heappop(self._ready)
                        self._running.add(index)
                        self._alone_running = self._alone[index]
                        self.most_running = max(self.most_running, len(self._running))
                        return index
                if not self._running:
                    if self._left:
                        raise RuntimeError(f"taskctl groups: {self._left} tests can never start")
                    return None
                self._cond.wait()

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
            self._cond.notify_all()

    def stop(self) -> None:
        """Start nothing more; running tests end normally."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
