"""Hooks of a run's life cycle, for the features built on it (resume, live pause, ...).

Registered in ``pytest_addhooks``; :class:`~pytest_taskctl.run.TaskRun` (and
the group runner, for its source of tests) calls them through ``config.hook``.
A feature is a plugin object that implements the ones it needs, so the core
keeps no callback lists and no feature depends on the order in which another
one was registered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .features.groups.schedule import Schedule
    from .outcome import TestOutcome
    from .run import TaskRun


def pytest_taskctl_run_starting(
    run: TaskRun, previous_meta: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """The run owns its id and is connected; nothing of this attempt is in etcd yet.

    ``previous_meta`` is the meta record an earlier attempt of the same run id
    left (``None`` for a new run or without etcd). Return fields to add to
    this attempt's meta record, or raise :class:`pytest.UsageError` to refuse
    the run (exit 4) before anything is written.
    """


def pytest_taskctl_test_finished(run: TaskRun, nodeid: str, outcome: TestOutcome) -> None:
    """A test is over (its protocol ended; on the xdist controller, its last report is
    in), with its last attempt's outcome when a rerun plugin ran it again; called once a
    test, on the thread that ran it."""


def pytest_taskctl_run_finishing(run: TaskRun, session: pytest.Session) -> None:
    """The session ends; the run's end status is decided right after this.

    A feature may still change ``session.exitstatus`` here (resume turns
    "no tests collected" into success when every test passed earlier).
    """


def pytest_taskctl_run_closing(run: TaskRun) -> None:
    """The run closes: the last writes were queued and etcd is still connected.

    Called exactly once, also when the session never finished (another
    plugin's ``pytest_sessionstart`` raised).
    """


@pytest.hookspec(firstresult=True)
def pytest_taskctl_thread_source(
    session: pytest.Session, schedule: Schedule, threads: int
) -> Callable[[], int | None] | None:
    """``--thread``: the worker threads are about to start; no test is lined up yet.

    A feature that hands the tests out itself (``--join`` claims them from the
    run's queue) lines them up on ``schedule`` as it gets them and returns the
    function each of the ``threads`` worker threads calls for its next test:
    the index of a test it took from ``schedule``, or ``None`` when the thread
    is done. Without such a feature every test is lined up at once and the
    threads take them from ``schedule``.
    """
