"""One word for how a test ended, from its setup/call/teardown reports."""

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
