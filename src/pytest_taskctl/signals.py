"""SIGTERM ends a run as INTERRUPTED, like Ctrl-C, without taking the signal from anyone.

pytest handles Ctrl-C (KeyboardInterrupt) but not SIGTERM, which CI systems
and GNU ``timeout`` send. The handler records that a signal came -- the end
status is decided from that record, not from hooks that a second signal may
cut short -- chains to a handler that was there before ours, and raises
KeyboardInterrupt once, so pytest unwinds, reports and lets the run flush.
A second SIGTERM while shutting down is recorded, not raised again.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class SigtermInterrupts:
    def __init__(self) -> None:
        self.received = 0
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        """From the main thread only; a suite that ignores SIGTERM keeps ignoring it."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN:
            return
        self._previous = previous
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        previous = self._previous
        if callable(previous):
            previous(signum, frame)  # may raise or exit itself, as it would without us
        if self.received == 1:
            raise KeyboardInterrupt("SIGTERM")

    def restore(self) -> None:
        if self._installed:
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
