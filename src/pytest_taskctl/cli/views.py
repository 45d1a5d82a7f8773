"""Runs as taskctl shows them: etcd leaves -> run records -> text.

:func:`run_record` is the one reader of a run's run-level keys, so ``status``,
``runs`` and ``watch`` (text and ``--json``) agree on every field; the
``format_*`` helpers turn a record into the words and tables they print.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..keys import FINAL_STATUSES, LIVE_STATUSES, flag_is_true
from ..records import json_object
from .context import CommandFailed, Context

COUNT_NAMES = ("passed", "failed", "skipped", "remaining", "total")


# -- reading runs -----------------------------------------------------------------


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def run_record(run_id: str, leaves: Mapping[str, bytes]) -> dict[str, Any]:
    """The JSON object of one run, from its run-level keys (``status``, ``meta``, flags).

    ``leaves`` is :meth:`StateStore.run_leaves`: leaf name -> value, missing keys left out.
    ``status`` comes from ``<run>/status`` (the plugin's word), else from meta;
    times are epoch seconds as the plugin writes them. A live status whose
    ``<run>/lease`` is gone belongs to a process that died without ending
    (SIGKILL, OOM, a lost machine; the lease expired): it reads ``INTERRUPTED``
    and ``process_died`` is true (:func:`process_died`).
    """
    meta = json_object(leaves.get("meta")) or {}
    raw_status = leaves.get("status")
    status = raw_status.decode("utf-8", "replace").strip() if raw_status is not None else None
    if not status and isinstance(meta.get("status"), str):
        status = meta["status"]
    counts = meta.get("counts")
    if not isinstance(counts, dict):
        counts = {}
    current = meta.get("current")
    if not isinstance(current, list):
        current = []
    pid = meta.get("pid")
    exit_code = meta.get("exit_code")
    died = process_died(status, leaves)
    return {
        "run_id": run_id,
        "status": "INTERRUPTED" if died else status or None,
        "process_died": died,
        "counts": {name: _count(counts.get(name)) for name in COUNT_NAMES},
        "started": _number(meta.get("started")),
        "updated": _number(meta.get("updated")),
        "ended": _number(meta.get("ended")),
        "host": meta.get("host") if isinstance(meta.get("host"), str) else None,
        "pid": pid if isinstance(pid, int) else None,
        "current": [str(nodeid) for nodeid in current],
        "flags": {
            "paused": flag_is_true(leaves.get("paused")),
            "cancelled": flag_is_true(leaves.get("cancelled")),
        },
        "exit_code": exit_code if isinstance(exit_code, int) else None,
        "trace_id": meta.get("trace_id"),
        "traceparent": meta.get("traceparent"),
        "log_file": meta.get("log_file"),
        "traces_file": meta.get("traces_file"),
        "argv": meta.get("argv") if isinstance(meta.get("argv"), list) else None,
        "attempt": _count(meta.get("attempt")) or None,
        "left": _count(meta.get("left")) if meta.get("left") is not None else None,
        "attempts": _attempts(meta.get("attempts")),
    }


def process_died(status: str | None, leaves: Mapping[str, bytes]) -> bool:
    """A live status without the run's lease: its process died and the lease expired.

    The plugin takes ``<run>/lease`` before it writes any status and revokes
    it only after the final one, so a live run always has it.
    """
    return status in LIVE_STATUSES and "lease" not in leaves


def _attempts(value: object) -> list[dict[str, Any]]:
    """Per-attempt records of a resumed run (``--resume``), as the plugin wrote them."""
    if not isinstance(value, list):
        return []
    return [
        {
            "attempt": _count(item.get("attempt")),
            "status": item.get("status"),
            "started": _number(item.get("started")),
            "resume": bool(item.get("resume")),
            "to_run": _count(item.get("to_run")) if item.get("to_run") is not None else None,
            "counts": {
                name: _count((item.get("counts") or {}).get(name))
                for name in ("passed", "failed", "skipped")
            },
        }
        for item in value
        if isinstance(item, dict)
    ]


def read_run(ctx: Context, run_id: str) -> dict[str, Any]:
    """One run's record; :class:`CommandFailed` when no key exists under ``<run>/``."""
    leaves = ctx.store.run_leaves(run_id)
    if not leaves and not ctx.store.run_exists(run_id):
        raise unknown_run(ctx, run_id)
    return run_record(run_id, leaves)


def unknown_run(ctx: Context, run_id: str) -> CommandFailed:
    return CommandFailed(
        f"no run {run_id!r} under {ctx.prefix or '/'} on etcd {ctx.settings.describe()} "
        "(see `taskctl runs`; wrong --prefix or --etcd?)"
    )


def is_final(record: Mapping[str, Any]) -> bool:
    return record.get("status") in FINAL_STATUSES


# -- formatting -------------------------------------------------------------------


def format_time(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def format_duration(seconds: float | None, *, compact: bool = False) -> str:
    """``H:MM:SS`` (status, watch); ``compact``: ``42s``, ``3m07s``, ``1h02m`` (pause ages)."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if not compact:
        hours, rest = divmod(seconds, 3600)
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_counts(record: Mapping[str, Any]) -> str:
    counts = record["counts"]
    return (
        f"{counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped, {counts['remaining']} remaining"
    )


def flag_notes(record: Mapping[str, Any]) -> list[str]:
    """What the flags ask for that the status does not show yet."""
    notes: list[str] = []
    flags, status = record["flags"], record["status"]
    if is_final(record):
        return notes
    if flags["cancelled"]:
        notes.append("cancel requested")
    if flags["paused"] and status != "PAUSED" and not flags["cancelled"]:
        notes.append("pause requested: running tests finish first")
    if status == "PAUSED" and not flags["paused"] and not flags["cancelled"]:
        notes.append("resume requested")
    return notes


def format_line(record: Mapping[str, Any]) -> str:
    """One line of progress, as ``watch`` prints it when stdout is not a terminal."""
    line = f"{record['run_id']} {record['status'] or '-'}: {format_counts(record)}"
    if is_final(record) and record["exit_code"] is not None:
        line += f" (exit {record['exit_code']})"
    notes = flag_notes(record)
    if notes:
        line += " [" + "; ".join(notes) + "]"
    if record["current"] and not is_final(record):
        line += " | running " + ", ".join(record["current"])
    return line


def format_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
