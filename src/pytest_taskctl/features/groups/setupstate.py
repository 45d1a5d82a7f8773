"""pytest's stack of set-up nodes, for tests ending in any order on several threads.

pytest's ``SetupState`` keeps one stack and tears down what the next test does
not share with the current one; with tests of different modules running at
once, that would tear down a module another thread is still using.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from _pytest.nodes import Node
from _pytest.outcomes import TEST_OUTCOME

from .worker import worker_state

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # a pytest dependency on 3.10


@dataclass
class _CollectorState:
    finalizers: list[Callable[[], object]]
    error: tuple[BaseException, Any] | None = None


class ConcurrentSetupState:
    """Stands in for pytest's ``SetupState`` (``session._setupstate``) under ``--thread``.

    pytest keeps one stack of set-up nodes and tears down what the next test
    does not need. Here a collector (session, package, module, class) is set
    up once, by the first test that needs it, under a lock (the others wait),
    and torn down by the thread that ends its last test; with tests left
    unrun (``-x``, interrupt) the rest is torn down at session end. A test's
    own node and its finalizers belong to the thread running it.

    "Its last test" is the last of the tests :meth:`expect` was told about:
    all of the session's at once, or a few at a time when ``--join`` claims
    them, so a module is torn down when this process holds none of its tests
    any more, and set up again if one comes back later (as pytest does when
    a module's tests are not next to each other).
    """

    def __init__(self, items: Iterable[pytest.Item] = ()) -> None:
        self._users: Counter[Node] = Counter()
        self._collectors: dict[Node, _CollectorState] = {}
        self._collector_locks: dict[Node, threading.Lock] = {}
        self._items: dict[Node, list[Callable[[], object]]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.expect(items)

    def expect(self, items: Iterable[pytest.Item]) -> None:
        """These tests will run here: their collectors stay set up until they ended."""
        with self._lock:
            for item in items:
                self._users.update(item.listchain()[:-1])

    @property
    def stack(self) -> dict[Node, None]:
        """Nodes set up and not torn down (pytest's fixtures module tests membership)."""
        with self._lock:
            return dict.fromkeys([*self._collectors, *self._items])

    def is_node_active(self, node: Node) -> bool:
        with self._lock:
            return node in self._collectors or node in self._items

    def setup(self, item: pytest.Item) -> None:
        self._local.torn_down = None  # --join may hand the same test to this thread again
        for collector in item.listchain()[:-1]:
            self._setup_collector(collector)
        with self._lock:
            self._items[item] = [item.teardown]
        item.setup()

    def _node_lock(self, collector: Node) -> threading.Lock:
        with self._lock:
            return self._collector_locks.setdefault(collector, threading.Lock())

    def _setup_collector(self, collector: Node) -> None:
        with self._node_lock(collector):
            state = self._collectors.get(collector)
            if state is None:
                state = _CollectorState([collector.teardown])
                with self._lock:
                    self._collectors[collector] = state
                try:
                    collector.setup()
                except TEST_OUTCOME as exc:
                    state.error = (exc, exc.__traceback__)
                    raise
        if state.error is not None:
            raise state.error[0].with_traceback(state.error[1])

    def addfinalizer(self, finalizer: Callable[[], object], node: Node) -> None:
        assert callable(finalizer)
        with self._lock:
            finalizers = self._items.get(node)
            if finalizers is None:
                state = self._collectors.get(node)
                assert state is not None, (node, "is not set up")
                finalizers = state.finalizers
            finalizers.append(finalizer)

    def teardown_exact(self, nextitem: pytest.Item | None) -> None:
        """Tear down the current thread's test, then collectors whose last test it was.

        ``nextitem`` is ignored: which collectors end depends on the tests
        still to run anywhere, not on one thread's next test. Called on a
        thread without a test (pytest's ``pytest_sessionfinish``): tear down
        everything still set up.
        """
        # The worker's test, not "the test set up last": setup may never have
        # reached us (a skip marker or a cancelled run skips before it).
        item = worker_state.item
        if item is None:
            self._teardown_collectors(list(self._collectors)[::-1])
            return
        if getattr(self._local, "torn_down", None) is item:
            return
        self._local.torn_down = item
        errors: list[BaseException] = []
        with self._lock:
            finalizers = self._items.pop(item, [])
        _run_finalizers(item, finalizers, errors)
        # Innermost first, and a collector's last reference is released only
        # after its child is torn down: another thread ending the session's
        # last test must not tear the session down under our module.
        for collector in reversed(item.listchain()[:-1]):
            with self._lock:
                self._users[collector] -= 1
                last = self._users[collector] <= 0 and collector in self._collectors
            if last:
                self._finish_collector(collector, errors, unused_only=True)
        _raise_teardown_errors(errors)

    def _teardown_collectors(
        self, collectors: list[Node], errors: list[BaseException] | None = None
    ) -> None:
        raise_here = errors is None
        errors = [] if errors is None else errors
        for collector in collectors:
            self._finish_collector(collector, errors)
        if raise_here or errors:
            _raise_teardown_errors(errors)

    def _finish_collector(
        self, collector: Node, errors: list[BaseException], unused_only: bool = False
    ) -> None:
        """Tear ``collector`` down; with ``unused_only``, unless a test expected since needs it.

        Under the collector's lock, which its set-up takes too: a test that
        arrives while the finalizers run waits, then sets the collector up anew.
        """
        with self._node_lock(collector):
            with self._lock:
                if unused_only and self._users[collector] > 0:
                    return
                state = self._collectors.pop(collector, None)
            if state is not None:
                _run_finalizers(collector, state.finalizers, errors)


def _run_finalizers(
    node: Node, finalizers: list[Callable[[], object]], errors: list[BaseException]
) -> None:
    """Run ``finalizers`` last-in first-out, collecting errors as pytest's SetupState does."""
    these: list[BaseException] = []
    while finalizers:
        finalizer = finalizers.pop()
        try:
            finalizer()
        except TEST_OUTCOME as exc:
            these.append(exc)
    if len(these) == 1:
        errors.extend(these)
    elif these:
        errors.append(BaseExceptionGroup(f"errors while tearing down {node!r}", these[::-1]))


def _raise_teardown_errors(errors: list[BaseException]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise BaseExceptionGroup("errors during test teardown", errors[::-1])
