"""pytest's one-test-at-a-time state, made safe for tests on several threads (``--thread``).

pytest assumes one test runs at a time: one stack of set-up nodes, one
cached value per fixture, one ``sys.stdout`` swap, one set of log handlers,
one ``warnings.catch_warnings``. :func:`thread_safe_pytest` replaces each of
these, for the duration of the group runner's loop (:mod:`pytest_taskctl.groups`),
with a stand-in that keeps per-thread (or per-scope-node) state:

* ``session._setupstate``: :class:`ConcurrentSetupState` sets collectors
  (session, package, module, class) up once, under a lock, and tears each down
  after its last test; a test's own node belongs to the thread running it;
* fixture caches: :func:`cache_fixtures_per_node` gives every ``FixtureDef``
  one cached value per scope node (not one per process), set up under a lock;
* output capture, ``caplog``/log report sections and recorded warnings go to
  the test running on the emitting thread.

These reach into pytest internals (``_setupstate``, ``FixtureDef``,
``CaptureManager._global_capturing``, the logging plugin's handlers,
``Config._catch_configured_warnings``), checked against pytest 8 and 9; each
stand-in names what it replaces. Tests that need process-wide state for
themselves (:func:`runs_alone`) are run with nothing beside them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import _pytest.fixtures
import _pytest.warnings
import pytest
from _pytest.capture import CaptureIO, CaptureResult, TeeCaptureIO
from _pytest.config import apply_warning_filters, parse_warning_filter
from _pytest.fixtures import FixtureDef
from _pytest.logging import LogCaptureHandler
from _pytest.nodes import Node
from _pytest.outcomes import TEST_OUTCOME

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # a pytest dependency on 3.10

#: Fixtures that swap process-wide state (sys.stdout, file descriptors, warnings) for one test.
RUNS_ALONE_FIXTURES = frozenset(
    {"capsys", "capsysbinary", "capfd", "capfdbinary", "capteesys", "recwarn"}
)
TMP_PATH_FIXTURES = frozenset({"tmp_path", "tmpdir", "tmp_path_factory", "tmpdir_factory"})
CURRENT_TEST_VAR = "PYTEST_CURRENT_TEST"

# pytest >= 9 gives ``request`` a FixtureDef subclass, created per request (never
# cached per node); pytest 8's PseudoFixtureDef is no FixtureDef at all.
_RequestFixtureDef: type | None = getattr(_pytest.fixtures, "RequestFixtureDef", None)


def runs_alone(item: pytest.Item) -> bool:
    """Whether ``item`` swaps process-wide state for itself, so nothing may run beside it."""
    if RUNS_ALONE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    return item.get_closest_marker("filterwarnings") is not None


class WorkerState(threading.local):
    """What the current thread is doing for the group runner."""

    item: pytest.Item | None = None
    warnings_log: list[warnings.WarningMessage] | None = None


worker_state = WorkerState()


@dataclass
class _CollectorState:
    finalizers: list[Callable[[], object]]
    error: tuple[BaseException, Any] | None = None


@contextlib.contextmanager
def tolerant_current_test_var() -> Iterator[None]:
    """Let pytest's pop of ``PYTEST_CURRENT_TEST`` tolerate another thread's pop.

    pytest sets the variable in every phase and pops it (no default) after
    each teardown; two tests ending at once would make the second pop raise
    ``KeyError``. During the loop, pytest's helper pops with a default; it
    still sets the variable exactly as before.
    """
    import _pytest.runner as runner

    original = runner._update_current_test_var

    def update(item: pytest.Item, when: Any) -> None:
        if when is None:
            os.environ.pop(CURRENT_TEST_VAR, None)
        else:
            original(item, when)

    runner._update_current_test_var = update
    try:
        yield
    finally:
        runner._update_current_test_var = original


class ConcurrentSetupState:
    """Stands in for pytest's ``SetupState`` (``session._setupstate``) under ``--thread``.

    pytest keeps one stack of set-up nodes and tears down what the next test
    does not need. Here a collector (session, package, module, class) is set
    up once, by the first test that needs it, under a lock (the others wait),
    and torn down by the thread that ends its last test; with tests left
    unrun (``-x``, interrupt) the rest is torn down at session end. A test's
    own node and its finalizers belong to the thread running it.
    """

    def __init__(self, items: Iterable[pytest.Item]) -> None:
        self._users: Counter[Node] = Counter()
        for item in items:
            self._users.update(item.listchain()[:-1])
        self._collectors: dict[Node, _CollectorState] = {}
        self._collector_locks: dict[Node, threading.Lock] = {}
        self._items: dict[Node, list[Callable[[], object]]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def stack(self) -> dict[Node, None]:
        """Nodes set up and not torn down (pytest's fixtures module tests membership)."""
        with self._lock:
            return dict.fromkeys([*self._collectors, *self._items])

    def is_node_active(self, node: Node) -> bool:
        with self._lock:
            return node in self._collectors or node in self._items

    def setup(self, item: pytest.Item) -> None:
        for collector in item.listchain()[:-1]:
            self._setup_collector(collector)
        with self._lock:
            self._items[item] = [item.teardown]
        item.setup()

    def _setup_collector(self, collector: Node) -> None:
        with self._lock:
            node_lock = self._collector_locks.setdefault(collector, threading.Lock())
        with node_lock:
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
                self._finish_collector(collector, errors)
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

    def _finish_collector(self, collector: Node, errors: list[BaseException]) -> None:
        with self._lock:
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


class _ThreadStream:
    """``sys.stdout``/``sys.stderr`` under ``--thread``: a test's writes go to its own buffer.

    Writes from threads not capturing a test (the main thread, threads a test
    started) go to the stream that was there before.
    """

    def __init__(self, capture: ThreadCapture, name: str, original: TextIO) -> None:
        self._capture = capture
        self._name = name
        self._original = original

    def _target(self) -> TextIO:
        buffer = self._capture.buffer(self._name)
        return self._original if buffer is None else buffer

    def write(self, text: str) -> int:
        return self._target().write(text)

    def writelines(self, lines: Iterable[str]) -> None:
        target = self._target()
        for line in lines:
            target.write(line)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)


class ThreadCapture:
    """Stands in for pytest's global capture (``CaptureManager._global_capturing``).

    pytest swaps ``sys.stdout`` and file descriptors 1 and 2 for the whole
    process around each test phase and reads what accumulated: with tests on
    several threads, output would land in whichever test reads first. This
    object has the same methods, but per thread: ``resume``/``suspend``
    switch the calling thread's capture, ``readouterr`` returns the calling
    thread's text. Capture is at the ``sys`` level (like ``--capture=sys``);
    output written straight to file descriptors 1/2 (subprocesses, C code)
    goes to the terminal.
    """

    def __init__(self, tee: bool = False) -> None:
        self._tee = tee
        self._local = threading.local()
        self._saved: tuple[TextIO, TextIO] | None = None

    def buffer(self, name: str) -> TextIO | None:
        if not getattr(self._local, "active", False):
            return None
        return getattr(self._local, name)  # type: ignore[no-any-return]

    def start_capturing(self) -> None:
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _ThreadStream(self, "out", sys.stdout)
        sys.stderr = _ThreadStream(self, "err", sys.stderr)

    def stop_capturing(self) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None

    def _new_buffers(self) -> None:
        if self._tee and self._saved is not None:
            self._local.out, self._local.err = (TeeCaptureIO(s) for s in self._saved)
        else:
            self._local.out, self._local.err = CaptureIO(), CaptureIO()

    def resume_capturing(self) -> None:
        if getattr(self._local, "out", None) is None:
            self._new_buffers()
        self._local.active = True

    def suspend_capturing(self, in_: bool = False) -> None:
        self._local.active = False

    def is_started(self) -> bool:
        return bool(getattr(self._local, "active", False))

    def readouterr(self) -> CaptureResult[str]:
        out = getattr(self._local, "out", None)
        err = getattr(self._local, "err", None)
        result = CaptureResult(
            out.getvalue() if out is not None else "", err.getvalue() if err is not None else ""
        )
        self._new_buffers()
        return result

    def pop_outerr_to_orig(self) -> tuple[str, str]:
        out, err = self.readouterr()
        if self._saved is not None:
            if out:
                self._saved[0].write(out)
            if err:
                self._saved[1].write(err)
        return out, err


@contextlib.contextmanager
def capture_per_thread(config: pytest.Config) -> Iterator[None]:
    """Install :class:`ThreadCapture` in pytest's capture manager (unless ``-s``)."""
    capman: Any = config.pluginmanager.getplugin("capturemanager")
    original = getattr(capman, "_global_capturing", None)
    if original is None:  # -s: output goes straight to the terminal
        yield
        return
    capman.suspend_global_capture(in_=False)
    capture = ThreadCapture(tee=capman._method == "tee-sys")
    capture.start_capturing()
    capman._global_capturing = capture
    try:
        yield
    finally:
        capture.stop_capturing()
        if capman._global_capturing is capture:
            capman._global_capturing = original


class ThreadLogCaptureHandler(LogCaptureHandler):
    """pytest's log capture handler, taking only records logged on the thread that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.owner = threading.get_ident()

    def handle(self, record: logging.LogRecord) -> bool:
        if threading.get_ident() != self.owner:
            return False
        return bool(super().handle(record))


@contextlib.contextmanager
def log_capture_per_thread(config: pytest.Config) -> Iterator[None]:
    """Give each thread its own ``caplog`` and log-report handlers in pytest's logging plugin.

    The plugin attaches its two handlers to the root logger around each test
    phase, resets them, and removes them after: shared by threads, one test
    would clear or detach another's. Its class is swapped for the loop to a
    subclass whose ``caplog_handler``/``report_handler`` are per thread.
    """
    plugin: Any = config.pluginmanager.get_plugin("logging-plugin")
    if plugin is None:
        yield
        return
    base = type(plugin)
    local = threading.local()

    def per_thread(name: str) -> property:
        template = getattr(plugin, name)

        def handler(self: object) -> LogCaptureHandler:
            made = getattr(local, name, None)
            if made is None:
                made = ThreadLogCaptureHandler()
                made.setFormatter(template.formatter)
                made.setLevel(template.level)
                setattr(local, name, made)
            return made

        return property(handler)

    root = logging.getLogger()
    saved_level = root.level
    if plugin.log_level is not None:
        # Each phase lowers and restores the root level; from several threads
        # a restore would undo another test's. Lowered once, it stays put.
        root.setLevel(min(saved_level, plugin.log_level))
    plugin.__class__ = type(
        base.__name__,
        (base,),
        {
            "caplog_handler": per_thread("caplog_handler"),
            "report_handler": per_thread("report_handler"),
        },
    )
    try:
        yield
    finally:
        plugin.__class__ = base
        root.setLevel(saved_level)


_CATCH_WARNINGS_FOR_ITEM = _pytest.warnings.catch_warnings_for_item


@contextlib.contextmanager
def _configured_warnings(
    config: pytest.Config, *, record: bool
) -> Iterator[list[warnings.WarningMessage] | None]:
    """pytest 9's ``Config._catch_configured_warnings``, as pytest 8 inlines it per test."""
    with warnings.catch_warnings(record=record) as log:
        if not sys.warnoptions:
            warnings.filterwarnings("always", category=DeprecationWarning)
            warnings.filterwarnings("always", category=PendingDeprecationWarning)
        removed_in_8 = getattr(pytest, "PytestRemovedIn8Warning", None)  # pytest 8.0 only
        if removed_in_8 is not None:
            warnings.filterwarnings("error", category=removed_in_8)
        apply_warning_filters(
            config.getini("filterwarnings"), config.known_args_namespace.pythonwarnings or []
        )
        yield log


class ThreadWarnings:
    """Warnings recorded per test on threads; configured filters apply to every thread.

    pytest wraps each test in ``warnings.catch_warnings(record=True)``, which
    saves and restores process-wide state: overlapping on threads, the
    restores interleave, filters such as ``filterwarnings = error`` can be
    lost and warnings land in another test's record. For the loop, one
    ``catch_warnings`` applies the configured filters, and each test's
    context only points the calling thread's warnings at the test's record.
    Tests with ``filterwarnings`` marks run alone and keep pytest's own
    handling. Warnings from threads without a test are reported after the loop.
    """

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        # pytest 8 has no Config._catch_configured_warnings: the same set-up inline.
        self._original: Any = getattr(
            config, "_catch_configured_warnings", functools.partial(_configured_warnings, config)
        )
        self._outside: list[warnings.WarningMessage] = []

    def _route(self, message: warnings.WarningMessage) -> None:
        record = worker_state.warnings_log
        (self._outside if record is None else record).append(message)

    @contextlib.contextmanager
    def _for_test(
        self, *, record: bool
    ) -> Generator[list[warnings.WarningMessage] | None, None, None]:
        item = worker_state.item
        if item is None or runs_alone(item):
            with self._original(record=record) as pytest_record:
                yield pytest_record
            return
        recorded: list[warnings.WarningMessage] | None = [] if record else None
        worker_state.warnings_log = recorded
        filters_mutated = getattr(warnings, "_filters_mutated", None)
        if filters_mutated is not None:
            filters_mutated()  # "default"/"once" warnings show again in each test, as in pytest
        try:
            yield recorded
        finally:
            worker_state.warnings_log = None

    @contextlib.contextmanager
    def _for_item(
        self, config: Any, ihook: Any, when: Any, item: pytest.Item | None, *, record: bool = True
    ) -> Iterator[None]:
        """pytest 9's ``catch_warnings_for_item``, for pytest 8: filters from :meth:`_for_test`."""
        with self._for_test(record=record) as log:
            if item is not None:
                for mark in item.iter_markers(name="filterwarnings"):
                    for arg in mark.args:
                        warnings.filterwarnings(*parse_warning_filter(arg, escape=False))
            try:
                yield
            finally:
                for message in log or ():
                    ihook.pytest_warning_recorded.call_historic(
                        kwargs=dict(
                            warning_message=message,
                            nodeid="" if item is None else item.nodeid,
                            when=when,
                            location=None,
                        )
                    )

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        config: Any = self._config
        with self._original(record=True) as outside:
            self._outside = outside
            warnings._showwarnmsg_impl = self._route  # type: ignore[attr-defined]
            pytest8 = not hasattr(config, "_catch_configured_warnings")
            if pytest8:  # its catch_warnings_for_item inlines the filters: swap the whole helper
                _pytest.warnings.catch_warnings_for_item = self._for_item
            else:
                config._catch_configured_warnings = self._for_test
            try:
                yield
            finally:
                if pytest8:
                    _pytest.warnings.catch_warnings_for_item = _CATCH_WARNINGS_FOR_ITEM
                else:
                    del config._catch_configured_warnings
        for message in self._outside:
            config.hook.pytest_warning_recorded.call_historic(
                kwargs=dict(warning_message=message, nodeid="", when="runtest", location=None)
            )


def make_tmp_path_base(session: pytest.Session) -> None:
    """Create pytest's base temp directory now: made lazily by two threads, there would be two."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None and any(
        TMP_PATH_FIXTURES.intersection(getattr(item, "fixturenames", ())) for item in session.items
    ):
        factory.getbasetemp()


@contextlib.contextmanager
def thread_safe_pytest(session: pytest.Session) -> Iterator[None]:
    """Replace pytest's one-test-at-a-time state with the thread-aware stand-ins above."""
    # The SetupState stays after the loop: pytest_sessionfinish tears down through it.
    session._setupstate = ConcurrentSetupState(session.items)  # type: ignore[assignment]
    cache_fixtures_per_node(session)
    make_tmp_path_base(session)
    with contextlib.ExitStack() as stack:
        stack.enter_context(capture_per_thread(session.config))
        stack.enter_context(log_capture_per_thread(session.config))
        stack.enter_context(ThreadWarnings(session.config).installed())
        stack.enter_context(tolerant_current_test_var())
        yield
