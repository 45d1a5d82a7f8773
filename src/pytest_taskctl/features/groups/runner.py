"""The group runner: pytest's test loop on N worker threads.

Each worker takes the next test the :class:`~.schedule.Schedule` allows and
runs it through ``item.ihook.pytest_runtest_protocol``, so the pause gate, the
test's span and its log lines apply per thread exactly as in a sequential run.
The test's reports go to the terminal, JUnit XML, ``--lf`` etc. in one block
when it ends (as pytest-xdist's controller does), so lines never mix. All of
the session's tests are lined up at once, unless a feature hands them out
itself (``pytest_taskctl_thread_source``: ``--join`` lines up what this
process claims from the run's queue).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from _pytest.runner import runtestprotocol

from .plan import group_keys, runs_alone
from .schedule import Schedule
from .settings import GroupSettings
from .setupstate import ConcurrentSetupState
from .threadsafe import thread_safe_pytest
from .worker import worker_state

log = logging.getLogger("pytest_taskctl.plugin")


@dataclass
class _Loop:
    items: list[pytest.Item]
    schedule: Schedule
    #: The next test for a worker thread: ``schedule.take``, or a feature's source.
    take: Callable[[], int | None]
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
        setup_state = ConcurrentSetupState()
        schedule = Schedule(
            [group_keys(item, unit) for item in items],
            [runs_alone(i) for i in items],
            lined_up=(),
            on_line_up=lambda indexes: setup_state.expect(items[i] for i in indexes),
        )
        take = session.config.hook.pytest_taskctl_thread_source(
            session=session, schedule=schedule, threads=self.settings.threads
        )
        if take is None:  # no feature hands tests out: all of them are this process's
            schedule.line_up(range(len(items)))
            take = schedule.take
        loop = self._loop = _Loop(items, schedule, take)
        threads = [
            threading.Thread(
                target=contextvars.copy_context().run,
                args=(self._work, session, loop),
                name=f"taskctl-group-{number}",
                daemon=True,
            )
            for number in range(min(self.settings.threads, len(items)))
        ]
        with thread_safe_pytest(session, setup_state):
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
                index = loop.take()
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
                if worker_state.in_test:  # after the wrappers too: the test is recorded
                    worker_state.in_test = False
                    with loop.in_test_changed:
                        loop.in_test -= 1
                        loop.in_test_changed.notify_all()
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
        # Counted down by _work once the whole protocol returned: the wrappers around
        # this hook (taskctl's records the test's result there) finish before an
        # interrupt lets the session end.
        worker_state.in_test = True
        reports = runtestprotocol(item, log=False, nextitem=nextitem)
        with self._report_lock:
            ihook = item.ihook
            ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            for report in reports:
                ihook.pytest_runtest_logreport(report=report)
            ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True
