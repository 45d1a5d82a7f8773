"""``taskctl pause``, ``resume`` and ``cancel``: write a run's flag keys, safely.

Each is what ``etcdctl put/del <run>/<flag>`` does, plus the checks a person
wants: the run exists, has not ended yet and its process is alive (its lease
is held; a killed run's status stays live, see :func:`.views.process_died`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..etcd.store import RunDied, RunEnded, RunStatusChanging, UnknownRun
from .context import EXIT_OK, CommandFailed, Context
from .views import unknown_run


@dataclass(frozen=True)
class FlagAction:
    """What ``pause``/``resume``/``cancel`` write, and what they tell the user."""

    verb: str
    flag: str
    set_flag: bool
    done: str
    #: The subcommand's help, and the etcdctl command doing the same write.
    help: str
    etcdctl: str


FLAG_ACTIONS = {
    "pause": FlagAction(
        "pause",
        "paused",
        True,
        "paused {run}: no new test starts; running tests finish",
        help="hold the run before its next test",
        etcdctl="etcdctl put <run>/paused 1",
    ),
    "resume": FlagAction(
        "resume",
        "paused",
        False,
        "resumed {run}: tests start again",
        help="let a paused run go on",
        etcdctl="etcdctl del <run>/paused",
    ),
    "cancel": FlagAction(
        "cancel",
        "cancelled",
        True,
        "cancelled {run}: running tests finish, the rest are skipped",
        help="cancel the run: running tests finish, the rest are skipped",
        etcdctl="etcdctl put <run>/cancelled 1",
    ),
}


def apply_flag(ctx: Context, action: FlagAction, run_id: str) -> int:
    """Write the flag unless the run is unknown or over (see :meth:`StateStore.request_flag`)."""
    try:
        before = ctx.store.request_flag(run_id, action.flag, action.set_flag)
    except UnknownRun:
        raise unknown_run(ctx, run_id) from None
    except RunDied as exc:
        raise CommandFailed(f"{exc.message}; nothing to {action.verb}") from None
    except RunEnded as exc:
        raise CommandFailed(
            f"run {run_id} already ended ({exc.status}); nothing to {action.verb}"
        ) from None
    except RunStatusChanging:
        raise CommandFailed(
            f"run {run_id} changed status while we tried to {action.verb}; retry"
        ) from None
    message = action.done.format(run=run_id)
    if action.verb == "pause" and before:
        message += " (it was already paused)"
    elif action.verb == "resume" and not before:
        message = f"{run_id} was not paused; nothing to resume"
    elif action.verb == "cancel" and ctx.store.check_flag(run_id, "paused"):
        message += "; the pause is released"
    ctx.say(message)
    return EXIT_OK


def flag_command(action: FlagAction) -> Callable[[Context], int]:
    def handler(ctx: Context) -> int:
        return apply_flag(ctx, action, ctx.args.run_id)

    handler.__name__ = f"cmd_{action.verb}"
    return handler
