"""The live-pause plugin: hooks, fixtures and :func:`checkpoint`; the work is in :mod:`.service`.

:func:`checkpoint` finds the running test through a context variable the
plugin sets while each test's protocol runs, so test code needs no fixture.
"""

from __future__ import annotations

import threading
from contextvars import Token
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from .service import _ACTIVE_ITEM, FAILURE_TASK, LivePauses, ResumeDecision

if TYPE_CHECKING:
    from ...run import TaskRun


SERVICE_KEY = pytest.StashKey[LivePauses]()


def checkpoint(task: str, timeout: float | None = None) -> ResumeDecision:
    """Pause the running test until a person answers ``taskctl decide PAUSE_ID --result ...``.

    Blocks for at most ``timeout`` seconds (default ``--pause-timeout``);
    with ``--pause-checkpoint-mock`` it answers at once with reason ``Mock``.
    Check ``decision.outcome``: ``timed_out`` and ``cancelled`` carry no result.
    """
    if not isinstance(task, str) or not task.strip():
        raise ValueError("checkpoint task must not be empty")
    item = _ACTIVE_ITEM.get()
    if item is None:
        raise RuntimeError("checkpoint() can only be used while a pytest test is running")
    service = item.config.stash.get(SERVICE_KEY, None)
    if service is None:
        raise RuntimeError("checkpoint() needs the pytest-taskctl plugin (it is disabled)")
    return service.checkpoint(item.nodeid, task, timeout)


@dataclass
class LivePause:
    """The ``live_pause`` fixture: the run id and a checkpoint bound to the test."""

    service: LivePauses
    item: pytest.Item

    @property
    def run_id(self) -> str:
        return self.service.run.settings.run_id

    def checkpoint(self, task: str, timeout: float | None = None) -> ResumeDecision:
        if not isinstance(task, str) or not task.strip():
            raise ValueError("checkpoint task must not be empty")
        return self.service.checkpoint(self.item.nodeid, task, timeout)


# -- the plugin -----------------------------------------------------------------------


def make_plugin(config: pytest.Config, run: TaskRun) -> object | None:
    """The plugin object to register for this run, or ``None``."""
    service = config.stash[SERVICE_KEY] = LivePauses(config, run)
    plugin = LivePausePlugin(service)
    run.start_observers.append(plugin.test_started)
    run.end_observers.append(plugin.test_ended)
    if config.option.pause_on_failure:
        run.report_observers.append(plugin.pause_on_failure)
    return plugin


class LivePausePlugin:
    """Hooks and fixtures of live pauses; the work is in :class:`LivePauses`."""

    def __init__(self, service: LivePauses) -> None:
        self.service = service
        #: Tokens of ``_ACTIVE_ITEM`` per thread (``--thread``), innermost last: a
        #: protocol run inside another one restores the outer test when it ends.
        self._tokens: dict[int, list[Token[pytest.Item | None]]] = {}

    def test_started(self, item: pytest.Item, test: object) -> None:
        """``checkpoint()`` finds the running test (a start observer of the run: a
        protocol wrapper of its own cost more than the rest of this plugin's per-test work)."""
        token = _ACTIVE_ITEM.set(item)
        tokens = self._tokens.get(threading.get_ident())
        if tokens is None:
            tokens = self._tokens[threading.get_ident()] = []
        tokens.append(token)

    def test_ended(self, item: pytest.Item) -> None:
        tokens = self._tokens.get(threading.get_ident())
        if tokens:
            _ACTIVE_ITEM.reset(tokens.pop())

    def pause_on_failure(
        self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
    ) -> None:
        """``--pause-on-failure``: a report observer of the run (see ``TaskRun``)."""
        if report.when == "call" and report.failed:
            decision = self.service.pause(
                "failure",
                item.nodeid,
                FAILURE_TASK,
                self.service.default_timeout,
                failure=report.longreprtext,
            )
            if decision.failure_reason:
                report.sections.append(
                    ("live pause", f"External failure reason: {decision.failure_reason}")
                )

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        lines = []
        if config.option.pause_on_failure:
            lines.append(
                f"taskctl: live pause on failure (timeout {self.service.default_timeout:g} s): "
                "list with `taskctl pauses`, answer with `taskctl decide PAUSE_ID`"
            )
        if self.service.mock is not None:
            lines.append(
                f"taskctl: checkpoints answered at once: result {self.service.mock}, reason Mock"
            )
        return lines

    @pytest.fixture
    def live_pause(self, request: pytest.FixtureRequest) -> LivePause:
        """Checkpoints bound to this test: ``live_pause.checkpoint(task=...)``, ``.run_id``."""
        item = request.node
        assert isinstance(item, pytest.Item)
        return LivePause(self.service, item)

    @pytest.fixture
    def pause_run_id(self, live_pause: LivePause) -> str:
        """The id of the run, as ``taskctl pauses --run-id`` takes it."""
        return live_pause.run_id
