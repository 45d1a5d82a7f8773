"""What the current worker thread is doing, shared by the runner and pytest's stand-ins.

The runner sets the test a thread runs; the stand-ins for pytest's
one-test-at-a-time state (set-up stack, warnings) read it to know whose state
a call touches, since pytest's own calls do not say which test they are for.
"""

from __future__ import annotations

import threading
import warnings

import pytest


class WorkerState(threading.local):
    """Per thread: the test being run and where its warnings are recorded."""

    item: pytest.Item | None = None
    warnings_log: list[warnings.WarningMessage] | None = None
    #: The runner counted this thread's test as running (``_Loop.in_test``).
    in_test: bool = False


worker_state = WorkerState()
