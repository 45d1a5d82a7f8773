"""Fixture values cached per scope node, so overlapping tests do not share one slot."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import _pytest.fixtures
import pytest
from _pytest.fixtures import FixtureDef

# pytest >= 9 gives ``request`` a FixtureDef subclass, created per request (never
# cached per node); pytest 8's PseudoFixtureDef is no FixtureDef at all.
_RequestFixtureDef: type | None = getattr(_pytest.fixtures, "RequestFixtureDef", None)


class _FixtureSlot:
    """One ``FixtureDef``'s cached value and finalizers for one scope node."""

    __slots__ = ("cached_result", "finalizers", "lock")

    def __init__(
        self, cached_result: Any = None, finalizers: list[Callable[[], object]] | None = None
    ) -> None:
        self.cached_result = cached_result
        self.finalizers: list[Callable[[], object]] = [] if finalizers is None else finalizers
        self.lock = threading.RLock()


_DETACHED = object()  # the slot of reads on a thread that never executed the fixture
_slots_lock = threading.Lock()


class _NodeOfFixture(threading.local):
    """Per thread: the scope node each fixture was last executed or finished for."""

    def __init__(self) -> None:
        self.nodes: dict[object, object] = {}


_node_of_fixture = _NodeOfFixture()


class PerNodeFixtureDef(FixtureDef[Any]):
    """A ``FixtureDef`` with one cached value per scope node instead of one per process.

    pytest caches a fixture's value on its ``FixtureDef``: one slot, which is
    right when one test runs at a time. Under ``--thread`` a module-scoped
    fixture of a conftest serves two modules at once, and a function-scoped
    one two tests at once. Here ``cached_result`` and the finalizers live in
    a slot per scope node (``request.node``: the session, a module, a test
    ...); ``execute`` holds the slot's lock, so a fixture is never set up
    twice for one node, and a second thread waits and gets the cached value.
    Instances are converted in place (``__class__``) to keep their identity.
    """

    _taskctl_slots: dict[object, _FixtureSlot]

    @property
    def cached_result(self) -> Any:
        return self._taskctl_slot().cached_result

    @cached_result.setter
    def cached_result(self, value: Any) -> None:
        self._taskctl_slot().cached_result = value

    @property  # type: ignore[misc]  # Final in FixtureDef: the point is to replace it
    def _finalizers(self) -> list[Callable[[], object]]:
        return self._taskctl_slot().finalizers

    def _taskctl_slot(self, node: object | None = None) -> _FixtureSlot:
        if node is None:
            node = _node_of_fixture.nodes.get(self, _DETACHED)
        slot = self._taskctl_slots.get(node)
        if slot is None:
            with _slots_lock:
                slot = self._taskctl_slots.setdefault(node, _FixtureSlot())
        return slot

    def _taskctl_use(self, node: object) -> _FixtureSlot:
        # Reads of cached_result without a request (pytest's getfixturevalue
        # right after execute, setuponly) find this thread's last node.
        _node_of_fixture.nodes[self] = node
        return self._taskctl_slot(node)

    def execute(self, request: Any) -> Any:
        slot = self._taskctl_use(request.node)
        with slot.lock:
            return super().execute(request)

    def finish(self, request: Any) -> None:
        node = request.node
        slot = self._taskctl_use(node)
        try:
            super().finish(request)
        finally:
            if isinstance(node, pytest.Item) and slot.cached_result is None and not slot.finalizers:
                with _slots_lock:
                    self._taskctl_slots.pop(node, None)  # a test's slot is not needed again


_per_node_classes: dict[type, type] = {FixtureDef: PerNodeFixtureDef}


def cache_fixtures_per_node(session: pytest.Session) -> int:
    """Convert every ``FixtureDef`` the run can use to :class:`PerNodeFixtureDef`.

    Returns how many were converted.
    """
    manager: Any = session._fixturemanager
    if hasattr(manager, "_get_all_fixture_defs"):  # pytest >= 9
        fixturedefs: list[Any] = list(manager._get_all_fixture_defs())
    else:
        fixturedefs = [fd for fds in manager._arg2fixturedefs.values() for fd in fds]
    for item in session.items:
        info = getattr(item, "_fixtureinfo", None)
        if info is not None:
            fixturedefs.extend(fd for fds in info.name2fixturedefs.values() for fd in fds)
    converted = 0
    for fixturedef in fixturedefs:
        cls = type(fixturedef)
        if issubclass(cls, PerNodeFixtureDef) or (
            _RequestFixtureDef is not None and issubclass(cls, _RequestFixtureDef)
        ):
            continue
        per_node = _per_node_classes.get(cls)
        if per_node is None:
            per_node = type(f"PerNode{cls.__name__}", (PerNodeFixtureDef, cls), {})
            _per_node_classes[cls] = per_node
        state = fixturedef.__dict__
        detached = _FixtureSlot(state.pop("cached_result", None), state.pop("_finalizers", None))
        state["_taskctl_slots"] = {_DETACHED: detached}
        fixturedef.__class__ = per_node
        converted += 1
    return converted
