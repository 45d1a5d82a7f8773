"""A run's status words and the one rule that turns how a session ended into one.

The run's end status in etcd, the status of a resumed attempt in ``meta``
and the session span's ``test.suite.run.status`` all come from
:func:`end_status`, so they can never disagree.
"""

from __future__ import annotations

STATUSES = ("RUNNING", "PAUSED", "CANCELLED", "COMPLETED", "FAILED", "INTERRUPTED")
LIVE_STATUSES = frozenset({"RUNNING", "PAUSED"})
FINAL_STATUSES = frozenset({"CANCELLED", "COMPLETED", "FAILED", "INTERRUPTED"})

# pytest.ExitCode values, spelled out so that ``taskctl`` need not import pytest.
EXIT_OK, EXIT_INTERNAL_ERROR, EXIT_USAGE_ERROR, EXIT_NO_TESTS_COLLECTED = 0, 3, 4, 5

#: ``test.suite.run.status`` (OpenTelemetry semantic conventions) for each end status.
SUITE_STATUS = {
    "COMPLETED": "success",
    "FAILED": "failure",
    "CANCELLED": "aborted",
    "INTERRUPTED": "aborted",
}


def end_status(exitstatus: int, *, cancelled: bool, interrupted: bool) -> str:
    """CANCELLED (a cancel flag was seen), INTERRUPTED, COMPLETED or FAILED.

    ``interrupted`` is what really happened (Ctrl-C, SIGTERM, ``pytest.exit``),
    known from the signal and the keyboard-interrupt hook: pytest's exit
    code 2 alone cannot tell an interrupt from a collection error.
    """
    if cancelled:
        return "CANCELLED"
    if interrupted or exitstatus in (EXIT_INTERNAL_ERROR, EXIT_USAGE_ERROR):
        return "INTERRUPTED"
    if exitstatus in (EXIT_OK, EXIT_NO_TESTS_COLLECTED):
        return "COMPLETED"
    return "FAILED"  # failures, errors, collection errors
