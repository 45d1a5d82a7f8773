"""Concurrent groups of tests on threads (seed 003): ``--thread``, ``--group-unit``, ``group``.

Tests are put into groups (by default one per module; ``@pytest.mark.group``
names them explicitly). Tests of one group run one at a time in collection
order; different groups run at once on N worker threads, all in this process,
so session- and module-scoped fixtures are set up once.

Each worker runs a test through ``item.ihook.pytest_runtest_protocol``, so the
pause gate, the test's span and its log lines apply per thread exactly as in a
sequential run. The test's reports go to the terminal, JUnit XML, ``--lf`` etc.
in one block when it ends (as pytest-xdist's controller does), so lines never
mix. pytest's own one-test-at-a-time state is swapped for thread-aware
stand-ins during the loop (:mod:`pytest_taskctl.threadsafe`). See ``docs/groups.md``.
"""

from __future__ import annotations

import contextvars
import heapq
import logging
import sys
import threading
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from _pytest.fixtures import get_scope_node
from _pytest.nodes import Node
from _pytest.runner import runtestprotocol
from _pytest.scope import Scope

from ..options import GROUP_UNITS
from .threadsafe import runs_alone, thread_safe_pytest, worker_state

log = logging.getLogger("pytest_taskctl.plugin")

GroupKey = tuple[Hashable, ...]


def make_plugin(config: pytest.Config) -> GroupRunner | None:
    """The plugin object for ``--thread N``; ``None`` for one thread (no groups)."""
    settings = GroupSettings.from_config(config)
    return GroupRunner(settings) if settings.threads != 1 else None


@dataclass(frozen=True)
class GroupSettings:
    threads: int
    unit: str

    @classmethod
    def from_config(cls, config: pytest.Config) -> GroupSettings:
        """Read and validate; a bad value is a :class:`pytest.UsageError` (exit 4)."""
        threads = config.option.taskctl_threads
        if threads is None:
            threads = 1
        if threads < 1:
            raise pytest.UsageError(
                f"--thread {threads}: the number of threads must be 1 or more (1 = off)"
            )
        unit = config.option.taskctl_group_unit
        if unit is None:
            unit = str(config.getini("group-unit") or "module").strip().lower()
            if unit not in GROUP_UNITS:
                raise pytest.UsageError(
                    f"invalid ini value group-unit = {config.getini('group-unit')!r}: "
                    "use module, class or function"
                )
        if threads > 1:
            workers = config.getoption("numprocesses", None)  # pytest-xdist's -n
            if workers not in (None, 0):
                raise pytest.UsageError(
                    f"--thread {threads} cannot be combined with -n {workers} (pytest-xdist): "
                    "use --thread for groups on threads in one process, or -n for processes"
                )
            if config.getoption("usepdb", False) or config.getoption("trace", False):
                raise pytest.UsageError(
                    f"--pdb/--trace cannot be used with --thread {threads}: "
                    "debug with --thread 1 (the default)"
                )
        return cls(threads=threads, unit=unit)


# -- the plan: the groups of every test ---------------------------------------------


def group_keys(item: pytest.Item, unit: str) -> tuple[GroupKey, ...]:
    """The groups ``item`` belongs to; it runs when it is first in line in all of them.

    The closest ``group`` marker replaces the unit rule; ``group()`` means
    ungrouped. Tests sharing a parametrized fixture broader than a function
    also share a group, because pytest keeps one instance of it at a time.
    """
    keys: list[GroupKey] = []
    marker = item.get_closest_marker("group")
    if marker is not None:
        if marker.kwargs:
            raise pytest.UsageError(
                f"@pytest.mark.group takes group names as positional arguments, "
                f"e.g. @pytest.mark.group('db'); got keyword arguments "
                f"{sorted(marker.kwargs)} for {item.nodeid}"
            )
        for name in marker.args:
            try:
                hash(name)
            except TypeError:
                raise pytest.UsageError(
                    f"@pytest.mark.group({name!r}) on {item.nodeid}: a group name must be "
                    "hashable, e.g. a string"
                ) from None
            keys.append(("group", name))
    else:
        node = _unit_node(item, unit)
        if node is not None:
            keys.append(("unit", node.nodeid))
    keys.extend(_shared_param_keys(item))
    return tuple(dict.fromkeys(keys))


def _unit_node(item: pytest.Item, unit: str) -> Node | None:
    kind = {"module": pytest.File, "class": pytest.Class}.get(unit)
    if kind is None:
        return None
    return next((node for node in reversed(item.listchain()) if isinstance(node, kind)), None)


def _shared_param_keys(item: pytest.Item) -> Iterator[GroupKey]:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return
    for argname, scope in callspec._arg2scope.items():
        if argname not in callspec.params or scope is Scope.Function:
            continue
        if scope is Scope.Package:
            node: Node | None = item.session  # wider than needed, never too narrow
        else:
            node = get_scope_node(item, scope)
        if node is not None and node is not item:
            yield ("param", argname, node.nodeid)


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


# -- the plugin ------------------------------------------------------------------------


@dataclass
class _Loop:
    items: list[pytest.Item]
    schedule: Schedule
    errors: list[BaseException] = field(default_factory=list)
    interrupted: threading.Event = field(default_factory=threading.Event)
    in_test: int = 0
    in_test_changed: threading.Condition = field(default_factory=threading.Condition)


class GroupRunner:
    """Registered when ``--thread`` > 1: runs the test loop on worker threads."""

    def __init__(self, settings: GroupSettings) -> None:
        self.settings = settings
        self._report_lock = threading.Lock()
        self._loop: _Loop | None = None

    def pytest_report_header(self) -> list[str]:
        return [
            f"taskctl: {self.settings.threads} threads, groups per {self.settings.unit} "
            "(one test at a time per group)"
        ]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            return None  # pytest's own loop reports the collection errors
        if session.config.option.collectonly or not session.items:
            return None
        items = list(session.items)
        unit = self.settings.unit
        schedule = Schedule(
            [group_keys(item, unit) for item in items], [runs_alone(i) for i in items]
        )
        loop = self._loop = _Loop(items, schedule)
        threads = [
            threading.Thread(
                target=contextvars.copy_context().run,
                args=(self._work, session, loop),
                name=f"taskctl-group-{number}",
                daemon=True,
            )
            for number in range(min(self.settings.threads, len(items)))
        ]
        with thread_safe_pytest(session):
            try:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            except BaseException:
                self._interrupt(loop)
                raise
        log.info(
            "groups: %d tests on %d threads, at most %d at once",
            len(items),
            len(threads),
            schedule.most_running,
        )
        if loop.errors:
            raise loop.errors[0]
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    def _interrupt(self, loop: _Loop) -> None:
        """Ctrl-C/SIGTERM in the main thread: start nothing, let running tests end.

        Threads held at the pause gate are left behind (daemon threads); if
        released later, they run nothing. A second Ctrl-C stops waiting.
        """
        loop.interrupted.set()
        loop.schedule.stop()
        with loop.in_test_changed:
            if loop.in_test:
                message = (
                    f"interrupted; waiting for {loop.in_test} running tests "
                    "(interrupt again to stop now)"
                )
                log.warning("groups: %s", message)
                sys.stderr.write(f"\ntaskctl: {message}\n")
            loop.in_test_changed.wait_for(lambda: loop.in_test == 0)

    def _work(self, session: pytest.Session, loop: _Loop) -> None:
        schedule = loop.schedule
        while True:
            try:
                index = schedule.take()
            except BaseException as exc:
                loop.errors.append(exc)
                schedule.stop()
                return
            if index is None:
                return
            item = loop.items[index]
            following = schedule.next_after(index)
            nextitem = loop.items[following] if following is not None else None
            worker_state.item = item
            try:
                item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            except BaseException as exc:  # Exit, KeyboardInterrupt in a test, internal errors
                loop.errors.append(exc)
                schedule.stop()
            finally:
                worker_state.item = None
                # Stop before done(): done() may hand this group's next test to
                # a waiting thread, which must not start it after -x/--maxfail.
                if session.shouldfail or session.shouldstop:
                    schedule.stop()
                schedule.done(index)

    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        """Run the test on this thread; report it in one block when it has ended.

        Runs inside the other plugins' wrappers (the taskctl gate and span,
        warnings). Reporting hooks (terminal, JUnit XML, --lf, counters) get
        the test's reports together under a lock, as pytest-xdist's
        controller does, so one test's lines never mix with another's.
        """
        loop = self._loop
        if loop is None or worker_state.item is not item:
            return None  # not one of our workers: pytest's own protocol
        with loop.in_test_changed:
            if loop.interrupted.is_set():
                return True
            loop.in_test += 1
        try:
            reports = runtestprotocol(item, log=False, nextitem=nextitem)
            with self._report_lock:
                ihook = item.ihook
                ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
                for report in reports:
                    ihook.pytest_runtest_logreport(report=report)
                ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        finally:
            with loop.in_test_changed:
                loop.in_test -= 1
                loop.in_test_changed.notify_all()
        return True
