"""The plan: which groups each test belongs to, and which tests must run alone.

Worked out once, before the loop starts, from markers, the ``--group-unit``
rule and parametrized fixtures; :class:`~.schedule.Schedule` only sees the
resulting keys, so the rules can change without touching the scheduling.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import pytest
from _pytest.fixtures import get_scope_node
from _pytest.nodes import Node
from _pytest.scope import Scope

GroupKey = tuple[Hashable, ...]

#: Fixtures that swap process-wide state (sys.stdout, file descriptors, warnings) for one test.
RUNS_ALONE_FIXTURES = frozenset(
    {"capsys", "capsysbinary", "capfd", "capfdbinary", "capteesys", "recwarn"}
)


def group_keys(item: pytest.Item, unit: str) -> tuple[GroupKey, ...]:
    """The groups ``item`` belongs to; it runs when it is first in line in all of them.

    The closest ``group`` marker replaces the unit rule; ``group()`` means
    ungrouped. Tests sharing a parametrized fixture broader than a function
    also share a group, because pytest keeps one instance of it at a time.
    """
    keys: list[GroupKey] = []
    marker = item.get_closest_marker("group")
    if marker is not None:
        if marker.kwargs:
            raise pytest.UsageError(
                f"@pytest.mark.group takes group names as positional arguments, "
                f"e.g. @pytest.mark.group('db'); got keyword arguments "
                f"{sorted(marker.kwargs)} for {item.nodeid}"
            )
        for name in marker.args:
            try:
                hash(name)
            except TypeError:
                raise pytest.UsageError(
                    f"@pytest.mark.group({name!r}) on {item.nodeid}: a group name must be "
                    "hashable, e.g. a string"
                ) from None
            keys.append(("group", name))
    else:
        node = _unit_node(item, unit)
        if node is not None:
            keys.append(("unit", node.nodeid))
    keys.extend(_shared_param_keys(item))
    return tuple(dict.fromkeys(keys))


def runs_alone(item: pytest.Item) -> bool:
    """Whether ``item`` swaps process-wide state for itself, so nothing may run beside it.

    Such tests (``capsys``, ``recwarn``, ``filterwarnings`` marks ...) keep
    pytest's own handling of that state instead of the per-thread stand-ins.
    """
    if RUNS_ALONE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    return item.get_closest_marker("filterwarnings") is not None


def _unit_node(item: pytest.Item, unit: str) -> Node | None:
    kind = {"module": pytest.File, "class": pytest.Class}.get(unit)
    if kind is None:
        return None
    return next((node for node in reversed(item.listchain()) if isinstance(node, kind)), None)


def _shared_param_keys(item: pytest.Item) -> Iterator[GroupKey]:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return
    for argname, scope in callspec._arg2scope.items():
        if argname not in callspec.params or scope is Scope.Function:
            continue
        if scope is Scope.Package:
            node: Node | None = item.session  # wider than needed, never too narrow
        else:
            node = get_scope_node(item, scope)
        if node is not None and node is not item:
            yield ("param", argname, node.nodeid)
