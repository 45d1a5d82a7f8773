"""``taskctl pause``, ``resume`` and ``cancel``: write a run's flag keys, safely.

Each is what ``etcdctl put/del <run>/<flag>`` does, plus the checks a person
wants: the run exists and has not ended yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..etcd.store import delete_op, key_missing, mod_revision_equals, put_op
from ..keys import FINAL_STATUSES, flag_is_true
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
