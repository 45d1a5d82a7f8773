"""``taskctl runs`` and ``taskctl status``: all runs in a table, or one run in detail."""

from __future__ import annotations

import time

from ..records import json_object
from .context import EXIT_OK, Context
from .views import (
    flag_notes,
    format_counts,
    format_duration,
    format_table,
    format_time,
    is_final,
    read_run,
    run_record,
)


def cmd_runs(ctx: Context) -> int:
    records = [run_record(run_id, leaves) for run_id, leaves in ctx.store.list_runs().items()]
    records.sort(key=lambda r: (r["started"] is not None, r["started"] or 0.0, r["run_id"]))
    records.reverse()  # newest first, runs without a start time last
    if ctx.args.json:
        ctx.emit_json(records)
        return EXIT_OK
    if not records:
        ctx.say(f"no runs under {ctx.prefix or '/'} on etcd {ctx.settings.describe()}")
        return EXIT_OK
    header = ("RUN ID", "STATUS", "PASSED", "FAILED", "SKIPPED", "REMAINING", "STARTED", "HOST")
    rows = [header]
    for record in records:
        counts = record["counts"]
        status = record["status"] or "-"
        if flag_notes(record):
            status += "*"
        rows.append(
            (
                record["run_id"],
                status,
                *(str(counts[name]) for name in ("passed", "failed", "skipped", "remaining")),
                format_time(record["started"]),
                record["host"] or "-",
            )
        )
    for line in format_table(rows):
        ctx.emit(line)
    if any(flag_notes(record) for record in records):
        ctx.say("* a pause or cancel was requested and is not in effect yet")
    return EXIT_OK


def plan_count(ctx: Context, run_id: str) -> int:
    from ..features.join.layout import JoinKeys

    plan = json_object(ctx.store.gateway.get(JoinKeys(ctx.store.keys(run_id)).plan)) or {}
    count = plan.get("count")
    return count if isinstance(count, int) else 0


def cmd_status(ctx: Context) -> int:
    record = read_run(ctx, ctx.args.run_id)
    from ..features.join.workers import joined_counts, read_workers  # a --join run

    workers = read_workers(ctx.store.gateway, ctx.store.keys(ctx.args.run_id))
    if workers:  # a plain run's object keeps its shape (the same as in `taskctl runs`)
        record["workers"] = workers
    if workers and not is_final(record):
        total = record["counts"]["total"] or plan_count(ctx, ctx.args.run_id)
        record["counts"] = joined_counts(workers, total)
    if ctx.args.json:
        ctx.emit_json(record)
        return EXIT_OK
    counts, flags = record["counts"], record["flags"]
    status = record["status"] or "-"
    if record["exit_code"] is not None:
        status += f" (exit {record['exit_code']})"
    started = format_time(record["started"])
    if record["started"] and record["ended"]:
        started += f" (took {format_duration(record['ended'] - record['started'])})"
    elif record["started"] and not is_final(record):
        started += f" ({format_duration(time.time() - record['started'])} ago)"
    host = record["host"] or "-"
    if record["pid"] is not None:
        host += f" (pid {record['pid']})"
    yes_no = {True: "yes", False: "no"}
    lines = [
        ("run", record["run_id"]),
        ("status", status),
        ("progress", f"{format_counts(record)} (of {counts['total']})"),
        ("started", started),
        ("host", host),
        ("flags", f"paused: {yes_no[flags['paused']]}, cancelled: {yes_no[flags['cancelled']]}"),
    ]
    lines += [("note", note) for note in flag_notes(record)]
    if record["left"] is not None:
        lines.append(("left", f"{record['left']} test(s) not passed yet"))
    for attempt in record["attempts"]:
        counts_text = ", ".join(f"{v} {k}" for k, v in attempt["counts"].items())
        lines.append(
            (
                f"attempt {attempt['attempt']}",
                f"{attempt['status'] or 'RUNNING'}: {counts_text}"
                + (f" of {attempt['to_run']} to run" if attempt["to_run"] is not None else "")
                + (" (--resume)" if attempt["resume"] else ""),
            )
        )
    lines += [("current", nodeid) for nodeid in record["current"]] or [("current", "-")]
    for worker in workers:
        counts_text = ", ".join(f"{v} {k}" for k, v in worker["counts"].items())
        lines.append(
            (f"worker {worker['host']}:{worker['pid']}", f"{worker['state']}: {counts_text}")
        )
    if record["trace_id"]:
        lines.append(("trace id", str(record["trace_id"])))
    if record["log_file"]:
        lines.append(("log", str(record["log_file"])))
    if record["traces_file"]:
        lines.append(("traces", str(record["traces_file"])))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        ctx.emit(f"{label.ljust(width)}  {value}")
    return EXIT_OK
