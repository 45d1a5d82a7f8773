"""The plan of a joined run: the one collection every process must have.

Claims name tests by their index in the collection, so every process must
collect the same node ids in the same order (same parameters, same
deselection). The first process to finish collecting stores the hash, the
count and the node ids (in chunks, each far below etcd's request size limit);
the others compare hashes and, on a difference, read the ids back to name the
first differing node id.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ...etcd.gateway import EtcdGateway, key_missing, put_op
from ...records import json_object
from .layout import JoinKeys, dumps

#: Node ids per ``plan/ids/<n>`` key; ids are short, so a chunk stays well below 1 MiB.
IDS_PER_CHUNK = 2000
#: How long a process whose collection differs waits for the ids to be readable.
IDS_WAIT = 5.0


class PlanMismatch(Exception):
    """This process collected other tests than the run's plan."""


def collection_hash(nodeids: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for nodeid in nodeids:
        digest.update(nodeid.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def settle_plan(
    gateway: EtcdGateway, keys: JoinKeys, nodeids: Sequence[str], fields: Mapping[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Store our collection as the plan, or check it against the stored one.

    Returns ``(plan, created)``; raises :class:`PlanMismatch` naming the difference.
    """
    digest = collection_hash(nodeids)
    chunks = [nodeids[i : i + IDS_PER_CHUNK] for i in range(0, len(nodeids), IDS_PER_CHUNK)]
    plan = {**fields, "hash": digest, "count": len(nodeids), "chunks": len(chunks)}
    plan["created"] = round(time.time(), 3)
    ops = [put_op(keys.plan, dumps(plan)), put_op(keys.next, "0")]
    if gateway.txn(ops, [key_missing(keys.plan)]):
        for number, chunk in enumerate(chunks):
            gateway.put(keys.plan_ids(number), json.dumps(chunk))
        return plan, True
    stored = json_object(gateway.get(keys.plan)) or {}
    if stored.get("hash") == digest:
        return stored, False
    raise PlanMismatch(_difference(gateway, keys, stored, nodeids))


def _difference(
    gateway: EtcdGateway, keys: JoinKeys, stored: Mapping[str, Any], nodeids: Sequence[str]
) -> str:
    count = stored.get("count")
    head = (
        f"taskctl: --join: this process collected {len(nodeids)} tests, the run's plan has "
        f"{count} (plan from {stored.get('host', '?')} pid {stored.get('pid', '?')})"
    )
    theirs = _stored_ids(gateway, keys, stored)
    if theirs is None:
        return head + "; the collections differ (the plan's node ids are not readable)"
    for index, (mine, other) in enumerate(zip(nodeids, theirs, strict=False)):
        if mine != other:
            return head + f"; first difference at index {index}: here {mine!r}, plan {other!r}"
    index = min(len(nodeids), len(theirs))
    extra = nodeids[index] if len(nodeids) > index else None
    missing = theirs[index] if len(theirs) > index else None
    what = f"here also {extra!r}" if extra is not None else f"plan also {missing!r}"
    return head + f"; the same up to index {index}, then {what}"


def _stored_ids(
    gateway: EtcdGateway, keys: JoinKeys, stored: Mapping[str, Any]
) -> list[str] | None:
    chunks = stored.get("chunks")
    if not isinstance(chunks, int):
        return None
    deadline = time.monotonic() + IDS_WAIT
    while True:  # the plan's writer puts the ids right after the plan itself
        kvs = gateway.range_prefix(keys.plan + "/ids/").kvs
        if len(kvs) >= chunks:
            ids: list[str] = []
            for kv in kvs:
                ids.extend(json.loads(kv.value))
            return ids
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
