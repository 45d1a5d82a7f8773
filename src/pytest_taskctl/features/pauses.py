"""Live-pause records in etcd: listing and answering them (``taskctl pauses`` / ``decide``).

A pausing test (:mod:`pytest_taskctl.livepause`) writes
``<run>/pauses/<pause_id>`` as JSON with ``state: pending`` and waits. This
module is the other side, without pytest: it lists the records and answers
one with a transaction on the key's revision, so of two people deciding at
once exactly one wins. A pending pause whose process has died is *stale*
(on the same host at once, from the pid; elsewhere when its lease expires)
and can no longer be answered.

``pause_id`` is ``<run_id>.<8 hex digits>``, so a pause id alone names its run.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import time
from collections.abc import Mapping
from typing import Any

from ..etcd.gateway import EtcdGateway, mod_revision_equals, prefix_end, put_op
from ..etcd.store import StateStore
from ..keys import RunKeys, validate_run_id
from ..process import local_process_dead
from ..records import json_object

#: ``--result`` / ``--pause-checkpoint-mock`` words and the checkpoint result each stands for.
RESULT_TOKENS: dict[str, bool | None] = {"true": True, "false": False, "none": None}


class PauseError(Exception):
    """A pause that cannot be answered: unknown, no longer pending, stale, wrong arguments."""


def result_token(result: bool | None) -> str:
    """The word for a checkpoint result: ``true``, ``false`` or ``none``."""
    return {True: "true", False: "false", None: "none"}[result]


# -- pause ids and records ------------------------------------------------------------


def new_pause_id(run_id: str) -> str:
    return f"{run_id}.{secrets.token_hex(4)}"


def run_id_of(pause_id: str) -> str:
    """The run a pause id belongs to; :class:`PauseError` if it is not a pause id."""
    run_id, dot, suffix = pause_id.rpartition(".")
    try:
        if not dot or len(suffix) != 8 or int(suffix, 16) < 0:
            raise ValueError(pause_id)
        return validate_run_id(run_id)
    except ValueError:
        raise PauseError(
            f"not a pause id: {pause_id!r} (expected RUN_ID.XXXXXXXX, see `taskctl pauses`)"
        ) from None


def pause_record(raw: bytes | None) -> dict[str, Any] | None:
    """The record in a pause key: ``None`` if the key is gone, ``state: unknown`` if unreadable."""
    if raw is None:
        return None
    record = json_object(raw)
    return record if record is not None else {"state": "unknown"}


def effective_state(record: Mapping[str, Any], gateway: EtcdGateway | None) -> str:
    """The recorded state, except that a pending pause of a dead process is ``stale``."""
    state = str(record.get("state", "unknown"))
    if state != "pending":
        return state
    if local_process_dead(record):
        return "stale"
    lease = record.get("lease")
    expired = gateway is not None and isinstance(lease, int) and gateway.lease_ttl(lease) <= 0
    return "stale" if expired else "pending"


# -- taskctl pauses -------------------------------------------------------------------


def list_pauses(
    store: StateStore, run_id: str | None = None, include_all: bool = False
) -> list[dict[str, Any]]:
    """Pauses of one run or of every run, oldest first; only pending ones unless ``include_all``.

    Each is the stored record plus ``state`` (stale when its process died) and
    ``age`` in seconds.
    """
    gateway = store.gateway
    run_ids = [validate_run_id(run_id)] if run_id is not None else store.run_ids()
    now = time.time()
    pauses = []
    for rid in run_ids:
        keys = RunKeys(store.prefix, rid)
        for kv in gateway.range(keys.pauses, prefix_end(keys.pauses)).kvs:
            record = pause_record(kv.value) or {}
            state = effective_state(record, gateway)
            if not include_all and state != "pending":
                continue
            created = record.get("created")
            pauses.append(
                {
                    **record,
                    "pause_id": record.get("pause_id") or kv.key[len(keys.pauses) :],
                    "run_id": rid,
                    "state": state,
                    "recorded_state": record.get("state"),
                    "task": record.get("task"),
                    "nodeid": record.get("nodeid"),
                    "kind": record.get("kind"),
                    "created": created,
                    "age": round(now - created, 3) if isinstance(created, (int, float)) else None,
                }
            )
    pauses.sort(key=lambda pause: pause["created"] or 0)
    return pauses


# -- taskctl decide -------------------------------------------------------------------


def _validate_answer(
    record: Mapping[str, Any], failure_reason: str | None, result: str | None, reason: str | None
) -> str | None:
    """Seed 004's checks: failure pauses take --failure-reason, checkpoints --result/--reason."""
    kind = record.get("kind")
    if kind == "failure":
        if result is not None or reason is not None:
            return "--result/--reason are only allowed for checkpoint pauses; got kind=failure"
        return None
    if kind == "checkpoint":
        if failure_reason is not None:
            return "--failure-reason is only allowed for failure pauses; got kind=checkpoint"
        return None
    if failure_reason is not None or result is not None or reason is not None:
        return f"unsupported pause kind for supplied arguments: {kind or 'unknown'}"
    return None


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return f"{user}@{socket.gethostname()}"


def decide(
    store: StateStore,
    pause_id: str,
    *,
    failure_reason: str | None = None,
    result: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Answer a pending pause; returns the decided record.

    ``result`` is ``"true"``, ``"false"`` or ``"none"`` (``None``: not given).
    Raises :class:`PauseError` when the pause is unknown, no longer pending,
    stale, or the arguments do not fit its kind. A transaction on the key's
    revision makes sure that of two people deciding at once only one wins.
    """
    if result is not None and result not in RESULT_TOKENS:
        raise PauseError(f"--result must be true, false or none, not {result!r}")
    key = RunKeys(store.prefix, run_id_of(pause_id)).pause(pause_id)
    gateway = store.gateway
    for _ in range(5):
        found = gateway.range(key).kvs
        if not found:
            raise PauseError(f"pause not found: {pause_id} (see `taskctl pauses -a`)")
        kv = found[0]
        record = pause_record(kv.value) or {}
        state = effective_state(record, gateway)
        if state == "stale":
            raise PauseError(
                f"pause {pause_id} belongs to a dead process and is stale "
                f"(pid {record.get('pid')} on {record.get('host')}); nothing is waiting for it"
            )
        if state != "pending":
            raise PauseError(f"pause {pause_id} is no longer pending: {state}")
        error = _validate_answer(record, failure_reason, result, reason)
        if error is not None:
            raise PauseError(error)
        decided = {
            **record,
            "state": "decided",
            "decided": round(time.time(), 3),
            "decided_by": _who(),
        }
        if record.get("kind") == "failure":
            decided["failure_reason"] = failure_reason
        else:
            decided["result"] = RESULT_TOKENS[result] if result is not None else None
            decided["reason"] = reason
        if gateway.txn(
            [put_op(key, json.dumps(decided))], [mod_revision_equals(key, kv.mod_revision)]
        ):
            return decided
    raise PauseError(f"pause {pause_id} kept changing while deciding; try again")
