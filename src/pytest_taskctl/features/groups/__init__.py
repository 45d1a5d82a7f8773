"""Concurrent groups of tests on threads: ``--thread``, ``--group-unit``, ``group``.

Tests are put into groups (by default one per module; ``@pytest.mark.group``
names them explicitly). Tests of one group run one at a time in collection
order; different groups run at once on N worker threads, all in this process,
so session- and module-scoped fixtures are set up once. See ``docs/groups.md``.

One job per module, imported in this order (no cycles):

* :mod:`.settings`: ``--thread``/``--group-unit`` read and checked;
* :mod:`.plan`: each test's group keys, and whether it must run alone;
* :mod:`.schedule`: which test may start next;
* :mod:`.runner`: the plugin object, pytest's test loop on worker threads;
* :mod:`.threadsafe`: pytest's one-test-at-a-time state swapped for the loop,
  composed of :mod:`.setupstate`, :mod:`.fixtures`, :mod:`.capture` and
  :mod:`.warnings` (each reading :mod:`.worker` for the thread's test).
"""

from __future__ import annotations

import pytest

from .plan import GroupKey, group_keys, runs_alone
from .runner import GroupRunner
from .schedule import Schedule
from .settings import GroupSettings

__all__ = [
    "GroupKey",
    "GroupRunner",
    "GroupSettings",
    "Schedule",
    "group_keys",
    "make_plugin",
    "runs_alone",
]


def make_plugin(config: pytest.Config) -> GroupRunner | None:
    """The plugin object for ``--thread N``; ``None`` for one thread (no groups)."""
    settings = GroupSettings.from_config(config)
    return GroupRunner(settings) if settings.threads != 1 else None
