"""The telemetry features a run asks for, registered as plugin objects of their own.

``plugin.py`` calls :func:`register` once; with the default settings only the
phase and fixture spans are added, and the HTTP instrumentation module is not
even imported unless ``--taskctl-http`` asks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pytest

from .detail import FixtureSpans, PhaseSpans

if TYPE_CHECKING:
    from ..config import RunSettings


class Telemetry(Protocol):
    """What the telemetry plugins need from the run (the run's tracer, once it exists)."""

    def span_source(self) -> Any: ...

    def phase_source(self) -> Any: ...

    def tracer_provider(self) -> Any: ...

    @property
    def start_observers(self) -> list[Any]: ...

    @property
    def rerun_observers(self) -> list[Any]: ...

    @property
    def end_observers(self) -> list[Any]: ...

    @property
    def report_observers(self) -> list[Any]: ...


def register(
    pluginmanager: pytest.PytestPluginManager, settings: RunSettings, run: Telemetry
) -> None:
    """Register what ``--taskctl-span-detail`` and ``--taskctl-http`` ask for."""
    if settings.span_detail in ("phases", "fixtures"):
        phases = PhaseSpans(run.phase_source)
        pluginmanager.register(phases, "taskctl-phase-spans")
        run.start_observers.append(phases.test_started)
        run.rerun_observers.append(phases.test_started)  # each attempt has its phases
        run.end_observers.append(phases.test_ended)
        run.report_observers.append(phases.phase_reported)
    if settings.span_detail == "fixtures":
        pluginmanager.register(FixtureSpans(run.span_source), "taskctl-fixture-spans")
    if settings.http:
        from .http import HttpPlugin

        # Calls to the run's etcd are the plugin's business, not the suite's.
        own = tuple(f"{e.host}:{e.port}" for e in settings.etcd.endpoints)
        pluginmanager.register(HttpPlugin(run.tracer_provider, own), "taskctl-http")
