"""One connection state for several etcd watchers: lost when any is, back when all are.

A run and ``taskctl watch`` each watch more than one key range; every
:class:`~pytest_taskctl.etcd.store.WatchedRange` reports its own loss and
recovery, but a person wants to hear "lost etcd" once and "etcd is back"
once, when the last watcher has it back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

#: ``(connected, error)``, as :class:`~pytest_taskctl.etcd.store.WatchedRange` calls it.
ConnectionCallback = Callable[[bool, BaseException | None], None]


class JointConnection:
    """Joins the connection callbacks of several parts into one ``on_change``.

    ``on_change(False, error)`` runs when the first part is lost,
    ``on_change(True, None-or-error)`` when no part is lost any more; a part
    that reports the same state twice changes nothing. ``on_change`` runs
    outside the lock, on the reporting part's thread.
    """

    def __init__(self, on_change: ConnectionCallback | None = None) -> None:
        self.on_change = on_change
        self._lost: set[Hashable] = set()
        self._lock = threading.Lock()

    def callback(self, part: Hashable) -> ConnectionCallback:
        """The ``on_connection_change`` to give the watcher called ``part``."""

        def changed(connected: bool, error: BaseException | None) -> None:
            with self._lock:
                was_lost = bool(self._lost)
                if connected:
                    self._lost.discard(part)
                else:
                    self._lost.add(part)
                now_lost = bool(self._lost)
            if now_lost != was_lost and self.on_change is not None:
                self.on_change(not now_lost, error)

        return changed
