"""pytest's one-test-at-a-time state, made safe for tests on several threads (``--thread``).

pytest assumes one test runs at a time: one stack of set-up nodes, one
cached value per fixture, one ``sys.stdout`` swap, one set of log handlers,
one ``warnings.catch_warnings``. :func:`thread_safe_pytest` replaces each of
these, for the duration of the group runner's loop (:mod:`.runner`), with a
stand-in that keeps per-thread (or per-scope-node) state:

* ``session._setupstate``: :class:`~.setupstate.ConcurrentSetupState` sets
  collectors (session, package, module, class) up once, under a lock, and
  tears each down after its last test; a test's own node belongs to the
  thread running it;
* fixture caches: :func:`~.fixtures.cache_fixtures_per_node` gives every
  ``FixtureDef`` one cached value per scope node (not one per process), set
  up under a lock;
* output capture and ``caplog``/log report sections (:mod:`.capture`) and
  recorded warnings (:mod:`.warnings`) go to the test running on the
  emitting thread;
* ``PYTEST_CURRENT_TEST``, the base temp directory and ``ast.parse`` (one
  parse at a time), here.

These reach into pytest internals (``_setupstate``, ``FixtureDef``,
``CaptureManager._global_capturing``, the logging plugin's handlers,
``Config._catch_configured_warnings``), checked against pytest 8 and 9; each
stand-in names what it replaces. Tests that need process-wide state for
themselves (:func:`~.plan.runs_alone`) are run with nothing beside them.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from .capture import capture_per_thread, log_capture_per_thread
from .fixtures import cache_fixtures_per_node
from .setupstate import ConcurrentSetupState
from .warnings import ThreadWarnings

TMP_PATH_FIXTURES = frozenset({"tmp_path", "tmpdir", "tmp_path_factory", "tmpdir_factory"})
CURRENT_TEST_VAR = "PYTEST_CURRENT_TEST"


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


@contextlib.contextmanager
def serialized_ast_parse() -> Iterator[None]:
    """One ``ast.parse`` at a time while tests run on several threads.

    CPython keeps the ``ast`` module's recursion bookkeeping per interpreter,
    not per thread (CPython issue gh-106905, seen on 3.11): two parses at once
    can end in ``SystemError: AST constructor recursion depth mismatch``.
    pytest parses source for every failure report, and Python 3.11's
    ``traceback`` module for every formatted exception, so tests failing on
    two threads at once would crash the run. Parses are short; the lock costs
    nothing to a passing test.
    """
    original = ast.parse
    lock = threading.Lock()

    @functools.wraps(original)
    def parse(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return original(*args, **kwargs)

    ast.parse = parse
    try:
        yield
    finally:
        ast.parse = original


def make_tmp_path_base(session: pytest.Session) -> None:
    """Create pytest's base temp directory now: made lazily by two threads, there would be two."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None and any(
        TMP_PATH_FIXTURES.intersection(getattr(item, "fixturenames", ())) for item in session.items
    ):
        factory.getbasetemp()


@contextlib.contextmanager
def thread_safe_pytest(
    session: pytest.Session, setup_state: ConcurrentSetupState
) -> Iterator[None]:
    """Replace pytest's one-test-at-a-time state with the thread-aware stand-ins above."""
    # The SetupState stays after the loop: pytest_sessionfinish tears down through it.
    session._setupstate = setup_state  # type: ignore[assignment]
    cache_fixtures_per_node(session)
    make_tmp_path_base(session)
    with contextlib.ExitStack() as stack:
        stack.enter_context(capture_per_thread(session.config))
        stack.enter_context(log_capture_per_thread(session.config))
        stack.enter_context(ThreadWarnings(session.config).installed())
        stack.enter_context(tolerant_current_test_var())
        stack.enter_context(serialized_ast_parse())
        yield
