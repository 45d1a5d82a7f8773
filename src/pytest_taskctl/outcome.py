"""One word for how a test ended, from its setup/call/teardown reports.

A rerun plugin (pytest-rerunfailures) runs a failed test again inside the
same protocol: each attempt has its own three reports, and the test's
outcome is its last attempt's (as pytest's own summary counts it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pytest itself is not needed here: `taskctl` starts without it
    import pytest

#: pytest's word -> ``test.case.result.status`` (OTel semantic conventions).
RESULT_STATUS = {
    "passed": "pass",
    "xpassed": "pass",
    "failed": "fail",
    "error": "fail",
    "skipped": "skip",
    "xfailed": "skip",
}

#: ``test.case.result.status`` -> the progress counter it adds to.
_COUNTER = {"pass": "passed", "fail": "failed", "skip": "skipped"}


@dataclass
class TestOutcome:
    """Accumulates the reports of one test; failures of any phase win."""

    __test__ = False  # not a test class, wherever a test module imports it

    word: str = "passed"
    when: str = ""
    message: str = ""
    duration: float = 0.0
    reports: int = field(default=0, repr=False)
    #: This attempt's number: 2 and up when a rerun plugin ran the test again.
    attempts: int = 1
    #: The attempt's teardown report is in.
    complete: bool = False
    #: A report of the attempt said ``rerun``: another attempt follows (where reports
    #: are logged, as on the xdist controller; the runner's side cannot know yet).
    rerun: bool = False
    #: When the attempt's teardown ended (epoch s; 0.0 when not known): the test's span ends then.
    stop: float = 0.0

    @classmethod
    def interrupted(cls) -> TestOutcome:
        """A test whose teardown report never came (Ctrl-C, SIGTERM, ``pytest.exit``)."""
        return cls(word="error", when="call", message="interrupted")

    def record(self, report: pytest.TestReport) -> None:
        self.reports += 1
        self.duration += report.duration
        if report.failed:
            if self.word not in ("failed", "error"):
                self.word = "failed" if report.when == "call" else "error"
                self.when = report.when
                self.message = _short_message(report)
        elif report.skipped and self.word == "passed":
            self.word = "xfailed" if hasattr(report, "wasxfail") else "skipped"
            self.when = report.when
            self.message = _skip_reason(report)
        elif report.when == "call" and hasattr(report, "wasxfail") and self.word == "passed":
            self.word = "xpassed"

    @property
    def status(self) -> str:
        return RESULT_STATUS[self.word]

    @property
    def counter(self) -> str:
        """Which progress counter this outcome adds to: passed, failed or skipped."""
        return _COUNTER[RESULT_STATUS[self.word]]


class Outcomes:
    """The outcome of each running test, folded from its reports attempt by attempt."""

    def __init__(self) -> None:
        self._by_nodeid: dict[str, TestOutcome] = {}

    def record(self, report: pytest.TestReport, nodeid: str) -> TestOutcome | None:
        """Fold ``report`` in; the outcome when it completes an attempt.

        An attempt begins with the test's first report, after a completed attempt,
        or with a ``setup`` report after reports of its own (pytest-rerunfailures
        before 16.6.1 logs no teardown after a ``rerun`` report). It completes with
        its teardown, or with a report of no phase (``when="???"``: pytest-xdist's
        report of a worker that crashed in the test).
        """
        outcome = self._by_nodeid.get(nodeid)
        when = report.when
        if (
            outcome is None
            or outcome.complete
            or (when == "setup" and outcome.reports)  # a rerun whose attempt did not complete
        ):
            outcome = self._next_attempt(nodeid, outcome)
        if report.outcome == "rerun":  # type: ignore[comparison-overlap]  # pytest-rerunfailures'
            outcome.rerun = True
        outcome.record(report)
        if when == "setup" or when == "call":
            return None
        outcome.complete = True
        return outcome

    def start_rerun(self, nodeid: str) -> bool:
        """At a setup's start: True when an attempt of the test is complete, so a rerun
        plugin runs it again -- its next attempt begins now (an interrupt before its
        first report interrupts this attempt, not the one that completed)."""
        outcome = self._by_nodeid.get(nodeid)
        if outcome is None or not outcome.complete:
            return False
        self._next_attempt(nodeid, outcome)
        return True

    def _next_attempt(self, nodeid: str, before: TestOutcome | None) -> TestOutcome:
        attempts = 1 if before is None else before.attempts + 1
        outcome = self._by_nodeid[nodeid] = TestOutcome(attempts=attempts)
        return outcome

    def pop(self, nodeid: str) -> TestOutcome | None:
        return self._by_nodeid.pop(nodeid, None)


def _short_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)[:1000]
    return str(report.longrepr)[-1000:]


def _skip_reason(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return str(report.wasxfail)
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
        return reason.removeprefix("Skipped: ")
    return str(longrepr or "")
