"""``taskctl``: look at and steer pytest runs from any shell.

Every subcommand is a thin layer over :class:`~pytest_taskctl.store.StateStore`
and the key layout of :class:`~pytest_taskctl.keys.RunKeys`, so what
``taskctl`` does can always be done with ``etcdctl`` too (docs/cli.md lists
the equivalents).

Adding a subcommand takes a handler ``(ctx: Context) -> int``, an optional
function adding its arguments, and one :class:`Command` entry in
:func:`default_commands`. Shared etcd options, ``--json``, run id
validation, lazy etcd connection and the mapping of errors to exit codes
(0 ok, 1 failed action, 2 usage) come with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from .. import __version__
from ..etcd.gateway import EtcdUnavailable, delete_op, key_missing, mod_revision_equals, put_op
from ..etcd.settings import EtcdSettings, SettingError, resolve_prefix
from ..etcd.store import StateStore
from ..features.pauses import RESULT_TOKENS, PauseError, decide, list_pauses, result_token
from ..keys import FINAL_STATUSES, RunKeys, flag_is_true, validate_run_id
from ..records import json_object

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COUNT_NAMES = ("passed", "failed", "skipped", "remaining", "total")


class CommandFailed(Exception):
    """An action that could not be done (unknown run, ended run, ...): exit 1."""


# -- parser -----------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, help, arguments and handler."""

    name: str
    help: str
    handler: Callable[[Context], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    uses_etcd: bool = True
    prints_data: bool = False
    description: str | None = None


def add_etcd_options(parser: argparse.ArgumentParser) -> None:
    """The etcdctl-style connection options every etcd subcommand shares."""
    group = parser.add_argument_group("etcd connection (like etcdctl)")
    group.add_argument(
        "--etcd",
        "--endpoints",
        dest="etcd",
        metavar="HOST:PORT[,...]",
        help="etcd endpoints, also http(s):// URLs "
        "(env PYTEST_TASKCTL_ETCD, ETCDCTL_ENDPOINTS; default 127.0.0.1:2379)",
    )
    group.add_argument(
        "--prefix",
        metavar="PREFIX",
        help="key prefix of the runs (env PYTEST_TASKCTL_PREFIX; default /pytest-taskctl)",
    )
    for name, what in (
        ("cacert", "CA file"),
        ("cert", "client certificate"),
        ("key", "client key"),
    ):
        group.add_argument(
            f"--{name}",
            f"--etcd-{name}",
            dest=name,
            metavar="FILE",
            help=f"TLS {what} (env PYTEST_TASKCTL_ETCD_{name.upper()}, ETCDCTL_{name.upper()})",
        )
    group.add_argument(
        "--user",
        "--etcd-user",
        dest="user",
        metavar="USER[:PASSWORD]",
        help="etcd credentials (env PYTEST_TASKCTL_ETCD_USER, ETCDCTL_USER; a password "
        "given apart: PYTEST_TASKCTL_ETCD_PASSWORD, ETCDCTL_PASSWORD)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print JSON (shapes in docs/cli.md) instead of text"
    )


def run_id_argument(text: str) -> str:
    """argparse type for run ids: a bad one is a usage error naming the allowed pattern."""
    try:
        return validate_run_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_run_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", type=run_id_argument, help="the run's id")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {text}")
    return value


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskctl",
        description="Look at, pause, resume and cancel pytest runs through etcd (pytest-taskctl).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in default_commands() if commands is None else commands:
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.description or command.help
        )
        if command.arguments is not None:
            command.arguments(sub)
        if command.prints_data:
            add_json_option(sub)
        if command.uses_etcd:
            add_etcd_options(sub)
        sub.set_defaults(handler=command.handler)
    return parser


# -- context ----------------------------------------------------------------------


class Context:
    """What a handler needs: its arguments, the output streams, and etcd on first use."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self._store: StateStore | None = None

    @cached_property
    def settings(self) -> EtcdSettings:
        """Resolved on first use, so ``taskctl server`` never trips over etcd settings."""
        args = self.args
        return EtcdSettings.resolve(
            endpoints=getattr(args, "etcd", None),
            cacert=getattr(args, "cacert", None),
            cert=getattr(args, "cert", None),
            key=getattr(args, "key", None),
            user=getattr(args, "user", None),
            option_prefix="--etcd",
        )

    @cached_property
    def prefix(self) -> str:
        return resolve_prefix(getattr(self.args, "prefix", None))

    @property
    def store(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(self.settings, self.prefix)
        return self._store

    def keys(self, run_id: str) -> RunKeys:
        return RunKeys(self.prefix, run_id)

    def redact(self, text: str) -> str:
        """Belt and braces: a password must never reach the terminal."""
        if "settings" in self.__dict__ and self.settings.password:
            text = text.replace(self.settings.password, "***")
        return text

    def say(self, text: str) -> None:
        """A message for the person at the terminal (stderr)."""
        print(self.redact(text), file=self.err, flush=True)

    def emit(self, text: str) -> None:
        """Data (stdout)."""
        print(text, file=self.out, flush=True)

    def emit_json(self, data: Any) -> None:
        self.emit(json.dumps(data, indent=2))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


# -- reading runs -----------------------------------------------------------------


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def run_record(run_id: str, leaves: Mapping[str, bytes]) -> dict[str, Any]:
    """The JSON object of one run, from its run-level keys (``status``, ``meta``, flags).

    ``leaves`` is :meth:`StateStore.run_leaves`: leaf name -> value, missing keys left out.
    ``status`` comes from ``<run>/status`` (the plugin's word), else from meta;
    times are epoch seconds as the plugin writes them.
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
    return {
        "run_id": run_id,
        "status": status or None,
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


# -- runs and status --------------------------------------------------------------


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


def cmd_status(ctx: Context) -> int:
    record = read_run(ctx, ctx.args.run_id)
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


# -- pause, resume, cancel --------------------------------------------------------


@dataclass(frozen=True)
class FlagAction:
    """What ``pause``/``resume``/``cancel`` write, and what they tell the user."""

    verb: str
    flag: str
    set_flag: bool
    done: str


FLAG_ACTIONS = {
    "pause": FlagAction(
        "pause", "paused", True, "paused {run}: no new test starts; running tests finish"
    ),
    "resume": FlagAction("resume", "paused", False, "resumed {run}: tests start again"),
    "cancel": FlagAction(
        "cancel", "cancelled", True, "cancelled {run}: running tests finish, the rest are skipped"
    ),
}


def apply_flag(ctx: Context, action: FlagAction, run_id: str) -> int:
    """Write the flag unless the run is unknown or over.

    The write is a transaction guarded by the status key's revision, so a run
    that ends between our check and our write is refused, not flagged.
    """
    keys = ctx.keys(run_id)
    gateway = ctx.store.gateway
    flag_key = keys.flag(action.flag)
    for _attempt in range(5):
        status_kvs = gateway.range(keys.status).kvs
        if not status_kvs and not ctx.store.run_exists(run_id):
            raise unknown_run(ctx, run_id)
        status = status_kvs[0].text.strip() if status_kvs else None
        if status in FINAL_STATUSES:
            raise CommandFailed(f"run {run_id} already ended ({status}); nothing to {action.verb}")
        before = gateway.get(flag_key)
        guard = (
            mod_revision_equals(keys.status, status_kvs[0].mod_revision)
            if status_kvs
            else key_missing(keys.status)
        )
        op = put_op(flag_key, "1") if action.set_flag else delete_op(flag_key)
        if gateway.txn([op], compare=[guard]):
            break
    else:
        raise CommandFailed(f"run {run_id} changed status while we tried to {action.verb}; retry")
    message = action.done.format(run=run_id)
    if action.verb == "pause" and flag_is_true(before):
        message += " (it was already paused)"
    elif action.verb == "resume" and not flag_is_true(before):
        message = f"{run_id} was not paused; nothing to resume"
    elif action.verb == "cancel" and flag_is_true(gateway.get(keys.paused)):
        message += "; the pause is released"
    ctx.say(message)
    return EXIT_OK


def flag_command(action: FlagAction) -> Callable[[Context], int]:
    def handler(ctx: Context) -> int:
        return apply_flag(ctx, action, ctx.args.run_id)

    handler.__name__ = f"cmd_{action.verb}"
    return handler


# -- live pauses: pauses, decide ------------------------------------------------------


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


# -- server -----------------------------------------------------------------------


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM stop the foreground server alike.

    SIGINT is set explicitly: a shell starts background jobs with it ignored,
    and ``kill -INT`` should still stop the server cleanly.
    """
    if not threading_is_main():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def threading_is_main() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While etcd shuts down, a second Ctrl-C must not leave it running."""
    if not threading_is_main():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def cmd_server(ctx: Context) -> int:
    from ..etcd.server import EmbeddedEtcd, EtcdNotInstalled, port_in_use

    args = ctx.args
    data_dir = Path(args.data_dir).expanduser().absolute()
    if port_in_use(args.port, args.host):
        raise CommandFailed(
            f"port {args.port} on {args.host} is already in use (another etcd or taskctl "
            "server?); stop it or choose another with --port"
        )
    server = EmbeddedEtcd(data_dir, port=args.port, host=args.host)
    with stop_signals_interrupt():
        try:
            server.start()
            if not args.host.startswith("127.") and args.host != "localhost":
                ctx.say(
                    f"taskctl: warning: etcd listens on {args.host} without TLS or auth; "
                    "anyone who reaches it can pause and cancel runs"
                )
            ctx.say(f"etcd ready at {server.endpoint} (data {data_dir}); Ctrl-C to stop")
            assert server.process is not None
            code = server.process.wait()
            raise CommandFailed(f"etcd exited unexpectedly (code {code}); see {server.log_path}")
        except KeyboardInterrupt:
            ctx.say("stopping etcd")
            return EXIT_OK
        except EtcdNotInstalled as exc:
            raise CommandFailed(str(exc)) from None
        except (RuntimeError, OSError) as exc:  # etcd exited, never became healthy, no data dir
            raise CommandFailed(f"cannot start etcd: {exc}") from None
        finally:
            with signals_ignored():
                server.stop()


def server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=os.path.join(".taskctl", "etcd"),
        metavar="DIR",
        help="etcd data directory, kept between starts (default .taskctl/etcd); "
        "etcd's log goes next to it (DIR.log)",
    )
    parser.add_argument("--port", type=_port, default=2379, help="client port (default 2379)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; etcd runs without TLS or auth)",
    )


# -- commands and main ------------------------------------------------------------


def default_commands() -> list[Command]:
    """The subcommands of ``taskctl``; add one here (docs/cli.md documents each)."""
    from .watch import cmd_watch, watch_arguments  # imports this module

    flag_commands = [
        Command(
            name,
            help=help_text,
            handler=flag_command(FLAG_ACTIONS[name]),
            arguments=add_run_id,
            description=f"{help_text}. Equivalent: {etcdctl_text}",
        )
        for name, help_text, etcdctl_text in (
            ("pause", "hold the run before its next test", "etcdctl put <run>/paused 1"),
            ("resume", "let a paused run go on", "etcdctl del <run>/paused"),
            (
                "cancel",
                "cancel the run: running tests finish, the rest are skipped",
                "etcdctl put <run>/cancelled 1",
            ),
        )
    ]
    return [
        Command(
            "server",
            help="run an embedded etcd in the foreground (one machine, no Docker)",
            handler=cmd_server,
            arguments=server_arguments,
            uses_etcd=False,
        ),
        Command(
            "runs",
            help="list runs, newest first: status, progress, start, host",
            handler=cmd_runs,
            prints_data=True,
        ),
        Command(
            "status",
            help="one run: status, progress, flags, current test(s)",
            handler=cmd_status,
            arguments=add_run_id,
            prints_data=True,
        ),
        *flag_commands,
        Command(
            "watch",
            help="live progress of a run until it ends (exit 0 then)",
            handler=cmd_watch,
            arguments=watch_arguments,
            prints_data=True,
        ),
        Command(
            "pauses",
            help="live pauses waiting for a decision (-a: all), oldest first",
            handler=cmd_pauses,
            arguments=pauses_arguments,
            prints_data=True,
        ),
        Command(
            "decide",
            help="answer a live pause: --failure-reason, or --result/--reason for a checkpoint",
            handler=cmd_decide,
            arguments=decide_arguments,
            prints_data=True,
        ),
    ]


def _unreachable(ctx: Context, detail: str) -> str:
    where = ctx.settings.describe()
    if detail.startswith("etcd unreachable (") and detail.endswith(")"):
        detail = detail[len("etcd unreachable (") : -1]
    if len(ctx.settings.endpoints) == 1:
        endpoint = ctx.settings.endpoints[0]
        detail = detail.removeprefix(f"{endpoint.host}:{endpoint.port}: ")
    return f"taskctl: etcd unreachable at {where}: {detail}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskctl`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    ctx = Context(args, sys.stdout, sys.stderr)
    try:
        return int(args.handler(ctx))
    except SettingError as exc:
        ctx.say(f"taskctl: {exc}")
        return EXIT_USAGE
    except EtcdUnavailable as exc:
        ctx.say(_unreachable(ctx, str(exc)))
        return EXIT_FAILED
    except BrokenPipeError:  # `taskctl runs | head -1`: the reader is gone, stay quiet
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as exc:  # requests' errors are OSErrors: etcd went away mid-command
        ctx.say(_unreachable(ctx, _first_line(exc)))
        return EXIT_FAILED
    except CommandFailed as exc:
        ctx.say(f"taskctl: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if type(exc).__module__.startswith("etcd3"):  # etcd answered with an error
            ctx.say(f"taskctl: etcd refused the request: {_first_line(exc)}")
            return EXIT_FAILED
        raise
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
