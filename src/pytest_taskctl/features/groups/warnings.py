"""Warnings recorded per test on threads, with pytest's configured filters kept in force.

Works on pytest 9 (which sets filters up in ``Config._catch_configured_warnings``)
and pytest 8 (which inlines them in ``catch_warnings_for_item``): the version
is told by which of the two exists, not by its number.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Generator, Iterator
from typing import Any

import _pytest.warnings
import pytest
from _pytest.config import apply_warning_filters, parse_warning_filter

from .plan import runs_alone
from .worker import worker_state

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
