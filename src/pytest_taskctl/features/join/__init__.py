"""``pytest --run-id ID --join``: one run on many processes and machines, coordinated by etcd.

No coordinator of our own: every process collects, checks its collection
against the run's plan, and claims tests from a queue in etcd as it goes
(:mod:`.queue`, results acknowledged through the run's writer by
:mod:`.acks`); processes share the run id through a shared lease
(:mod:`.membership`), the run's PAUSED status (:mod:`.pausing`) and its end
(:mod:`.ending`). With ``--thread N`` the group runner's threads run what
their process claims (:mod:`.threads`).
:func:`make_plugin` checks the options that cannot be combined with
``--join`` (pytest-xdist) and returns the plugin object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ...run import TaskRun


def make_plugin(config: pytest.Config, run: TaskRun) -> object:
    """The plugin object of a joined run; a usage error (exit 4) for what cannot join."""
    option = config.option
    if getattr(option, "numprocesses", None) or hasattr(config, "workerinput"):
        raise pytest.UsageError(
            "--join is incompatible with pytest-xdist (-n): start several pytest processes "
            "with --join instead (each claims tests from the run), or drop --join and use -n"
        )
    if run.settings.run_id_generated:
        raise pytest.UsageError(
            "--join needs the id the processes share: pass --run-id ID (or set PYTEST_RUN_ID)"
        )
    from .plugin import JoinPlugin

    return JoinPlugin(config, run)
