"""Live pauses on failure and at checkpoints.

:mod:`.service` waits for a person's decision (pause records in etcd, their
lease, the watch); :mod:`.plugin` holds the hooks, the fixtures and
:func:`checkpoint`, the public entry point.
"""

from __future__ import annotations

from .plugin import LivePause, LivePausePlugin, checkpoint, make_plugin
from .service import CHECKPOINT_TASK, FAILURE_TASK, PAUSE_LEASE_TTL, LivePauses, ResumeDecision

__all__ = [
    "CHECKPOINT_TASK",
    "FAILURE_TASK",
    "PAUSE_LEASE_TTL",
    "LivePause",
    "LivePausePlugin",
    "LivePauses",
    "ResumeDecision",
    "checkpoint",
    "make_plugin",
]
