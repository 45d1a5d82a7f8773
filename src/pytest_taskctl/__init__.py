"""pytest-taskctl: every pytest run an observable, controllable task.

The public API is small on purpose:

* :func:`get_traceid` / :func:`trace_headers` -- the running test's trace id,
  to send to the API under test as ``X-Trace-Id`` and ``traceparent``;
* :class:`StateStore` -- pause, cancel and status of runs in etcd;
* :func:`checkpoint` -> :class:`ResumeDecision` -- pause a test for a person's decision.

Everything else is internal; the pytest hooks are in :mod:`pytest_taskctl.plugin`
and the ``taskctl`` command in :mod:`pytest_taskctl.cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .etcd.store import StateStore
    from .features.livepause import ResumeDecision, checkpoint
    from .telemetry.traceid import get_traceid, trace_headers

__all__ = [
    "ResumeDecision",
    "StateStore",
    "checkpoint",
    "get_traceid",
    "trace_headers",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pytest-taskctl")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    # Imported on first use: the span process (telemetry.span_process) and `taskctl`
    # start in a fraction of the time without etcd, pytest and package metadata.
    # ``from .x import module``, as the plugin imports them: pytester's in-process
    # runs drop modules from sys.modules, and both ways must find the same copy.
    if name in ("checkpoint", "ResumeDecision"):
        from .features import livepause

        return getattr(livepause, name)
    if name in ("get_traceid", "trace_headers"):
        from .telemetry import traceid

        return getattr(traceid, name)
    if name == "StateStore":
        from .etcd import store

        return store.StateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
