"""SIGTERM and Ctrl-C end a run as INTERRUPTED, also when they come twice.

pytest handles Ctrl-C (KeyboardInterrupt) but not SIGTERM, which CI systems
and GNU ``timeout`` send -- and ``timeout`` sends it twice within
milliseconds (to the child, then to its process group), as people press
Ctrl-C twice. A second KeyboardInterrupt that lands inside pytest's own
handling of the first skips its bookkeeping (the session then looks
successful) or our final write. So the handler:

* records every signal (:attr:`SigtermInterrupts.received`): the end status
  is decided from that record, not from hooks a signal may cut short;
* chains to a handler that was there before ours, and raises
  KeyboardInterrupt once, so pytest unwinds, reports and lets the run flush;
* records a repeat within :data:`REPEAT_GRACE` seconds, or any signal once
  the run is shutting down (:meth:`SigtermInterrupts.shutdown`; the shutdown
  is bounded), without raising again. A signal after the grace raises again:
  a person who insists gets their interrupt.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

#: A repeat within this many seconds of the raised interrupt is recorded, not raised.
REPEAT_GRACE = 5.0

HANDLED = (signal.SIGTERM, signal.SIGINT)


class SigtermInterrupts:
    """The run's SIGTERM and SIGINT handler (main thread only)."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}
        self._raised_at: float | None = None
        self._shutting_down = False

    def install(self) -> None:
        """From the main thread only; a suite that ignores a signal keeps ignoring it."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in HANDLED:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN or previous is None:
                continue
            self._previous[signum] = previous
            signal.signal(signum, self._on_signal)

    def shutdown(self) -> None:
        """The run is ending: later signals are recorded, never raised into the final writes."""
        self._shutting_down = True

    def _should_raise(self) -> bool:
        if self._shutting_down:
            return False
        now = time.monotonic()
        if self._raised_at is not None and now - self._raised_at < REPEAT_GRACE:
            return False
        self._raised_at = now
        return True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        raising = self._should_raise()
        previous = self._previous.get(signum)
        if previous is signal.default_int_handler:
            previous = None  # Python's own Ctrl-C handler: raising is done below, once
        if callable(previous) and not self._shutting_down:
            previous(signum, frame)  # may raise or exit itself, as it would without us
        if raising:
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)
        self._previous.clear()
