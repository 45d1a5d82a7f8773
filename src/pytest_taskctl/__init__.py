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

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .etcd.store import StateStore
from .telemetry.traceid import get_traceid, trace_headers

if TYPE_CHECKING:
    from .features.livepause import ResumeDecision, checkpoint

try:
    __version__ = version("pytest-taskctl")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ResumeDecision",
    "StateStore",
    "checkpoint",
    "get_traceid",
    "trace_headers",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the live-pause module pulls in pytest, which
    # `taskctl` and StateStore users do not need.
    if name in ("checkpoint", "ResumeDecision"):
        from .features import livepause

        return getattr(livepause, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
