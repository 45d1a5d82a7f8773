"""The ``taskctl`` parser, its registry of subcommands, and :func:`main`.

Adding a subcommand takes a handler ``(ctx: Context) -> int``, an optional
function adding its arguments, and one :class:`Command` entry in
:func:`default_commands`. Shared etcd options, ``--json``, run id
validation, lazy etcd connection and the mapping of errors to exit codes
(0 ok, 1 failed action, 2 usage) come with it.

Every subcommand is a thin layer over :class:`~pytest_taskctl.etcd.store.StateStore`
and the key layout of :class:`~pytest_taskctl.keys.RunKeys`, so what
``taskctl`` does can always be done with ``etcdctl`` too (docs/cli.md lists
the equivalents).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from ..etcd.gateway import EtcdError, EtcdUnavailable
from ..etcd.settings import SettingError
from .context import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandFailed,
    Context,
    add_etcd_options,
    add_json_option,
    add_run_id,
)
from .flags import FLAG_ACTIONS, flag_command
from .pauses import cmd_decide, cmd_pauses, decide_arguments, pauses_arguments
from .runs import cmd_runs, cmd_status
from .server import cmd_server, server_arguments
from .trace import cmd_trace, trace_arguments
from .watch import cmd_watch, watch_arguments


def package_version() -> str:
    """The installed distribution's version, the one fact ``--version`` shows.

    A source tree on ``sys.path`` without an installed distribution has no
    metadata; ``--version`` then says so instead of failing.
    """
    try:
        return version("pytest-taskctl")
    except PackageNotFoundError:
        return "unknown (not installed)"


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


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskctl",
        description="Look at, pause, resume and cancel pytest runs through etcd (pytest-taskctl).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
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


# -- commands and main ------------------------------------------------------------


def default_commands() -> list[Command]:
    """The subcommands of ``taskctl``; add one here (docs/cli.md documents each)."""
    flag_commands = [
        Command(
            action.verb,
            help=action.help,
            handler=flag_command(action),
            arguments=add_run_id,
            description=f"{action.help}. Equivalent: {action.etcdctl}",
        )
        for action in FLAG_ACTIONS.values()
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
        Command(
            "trace",
            help="a run's tests on one time line, or one test's span tree, from traces.jsonl",
            handler=cmd_trace,
            arguments=trace_arguments,
            uses_etcd=False,
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
    except OSError as exc:  # every transport error is an OSError: etcd went away mid-command
        ctx.say(_unreachable(ctx, _first_line(exc)))
        return EXIT_FAILED
    except CommandFailed as exc:
        ctx.say(f"taskctl: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except EtcdError as exc:  # etcd answered with an error
        ctx.say(f"taskctl: etcd refused the request: {_first_line(exc)}")
        return EXIT_FAILED
    finally:
        ctx.close()
