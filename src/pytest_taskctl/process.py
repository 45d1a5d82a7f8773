"""Who a process is, and whether a recorded process on this host is gone.

Run leases (``<run>/lease``), live pauses (``<run>/pauses/<id>``) and the run's
``meta`` name the process behind them by host and pid (and, on Linux, the
process start time). ``taskctl`` and the plugin use the same check to tell a
dead process from a slow one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks)`` of a local process, from /proc; None if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_identity() -> dict[str, Any]:
    """Who we are, for lease and pause records: host, pid and (Linux) process start time."""
    stat = _proc_stat(os.getpid())
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "proc_start": stat[1] if stat else None,
    }


def local_process_dead(owner: Mapping[str, Any]) -> bool:
    """True when ``owner`` (host, pid, optional proc_start) ran on this host and is gone.

    Another host's process cannot be checked from here: ``False``. A zombie,
    or a pid reused by another process (different start time), counts as gone.
    """
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return False
    state, started = stat
    expected = owner.get("proc_start")
    return state in ("Z", "X") or (isinstance(expected, int) and expected != started)
