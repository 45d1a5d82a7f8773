"""``taskctl pauses`` and ``taskctl decide``: list live pauses and answer one.

The etcd side lives in :mod:`pytest_taskctl.features.pauses`, which does not
import pytest, so ``taskctl`` stays free of the plugin's modules.
"""

from __future__ import annotations

import argparse

from ..features.pauses import RESULT_TOKENS, PauseError, decide, list_pauses, result_token
from .context import EXIT_OK, CommandFailed, Context, run_id_argument
from .views import format_duration, format_table


def cmd_pauses(ctx: Context) -> int:
    args = ctx.args
    pauses = list_pauses(ctx.store, args.run_id, include_all=args.all)
    if args.json:
        ctx.emit_json(pauses)
        return EXIT_OK
    if not pauses:
        ctx.say("taskctl: no pauses" if args.all else "taskctl: no pending pauses")
        return EXIT_OK
    header = ["PAUSE_ID", *(["STATE"] if args.all else []), "AGE", "KIND", "NODEID", "TASK"]
    rows = [header] + [
        [
            str(pause["pause_id"]),
            *([str(pause["state"])] if args.all else []),
            format_duration(pause.get("age"), compact=True),
            str(pause.get("kind") or "-"),
            str(pause.get("nodeid") or "-"),
            str(pause.get("task") or "-"),
        ]
        for pause in pauses
    ]
    for line in format_table(rows):
        ctx.emit(line)
    return EXIT_OK


def pauses_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-a", "--all", action="store_true", help="also decided, timed out, cancelled and stale ones"
    )
    parser.add_argument("--run-id", type=run_id_argument, help="only this run's pauses")


def cmd_decide(ctx: Context) -> int:
    args = ctx.args
    try:
        record = decide(
            ctx.store,
            args.pause_id,
            failure_reason=args.failure_reason,
            result=args.result,
            reason=args.reason,
        )
    except PauseError as exc:
        raise CommandFailed(str(exc)) from None
    if args.json:
        ctx.emit_json(record)
        return EXIT_OK
    if record.get("kind") == "failure":
        what = (
            f"failure reason {record['failure_reason']!r}"
            if record.get("failure_reason")
            else "no failure reason"
        )
    else:
        what = f"result {result_token(record.get('result'))}" + (
            f", reason {record['reason']!r}" if record.get("reason") else ""
        )
    ctx.emit(
        f"decided {record.get('pause_id')} ({record.get('kind')}, {record.get('nodeid')}): {what}"
    )
    return EXIT_OK


def decide_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pause_id", metavar="PAUSE_ID", help="as `taskctl pauses` shows it")
    parser.add_argument(
        "--failure-reason", metavar="TEXT", help="failure pauses: shown in the test's report"
    )
    parser.add_argument(
        "--result", choices=sorted(RESULT_TOKENS), help="checkpoints: what checkpoint() returns"
    )
    parser.add_argument("--reason", metavar="TEXT", help="checkpoints: why")
