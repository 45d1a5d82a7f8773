"""pytest-taskctl: every pytest run an observable, controllable task.

The public API is small on purpose:

* :func:`get_traceid` / :func:`trace_headers` -- the running test's trace id,
  to send to the API under test as ``X-Trace-Id`` and ``traceparent``;
* :class:`StateStore` -- pause, cancel and status of runs in etcd.
"""

from __future__ import annotations

from .store import StateStore
from .tracing import get_traceid, trace_headers

__version__ = "0.1.0"

__all__ = ["StateStore", "get_traceid", "trace_headers", "__version__"]
