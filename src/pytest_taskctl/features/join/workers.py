"""The ``workers`` of a joined run as ``taskctl status`` shows them.

A process's record stays after it leaves (its final state and counts);
whether it is still alive comes from its ``queue/alive/<worker>`` key, which
vanishes with its lease -- so a killed process shows as ``DEAD`` within the
lease's TTL, not as running forever. Whether it is paused comes from its
``queue/paused/<worker>`` key, the one the run's ``PAUSED`` is decided from,
so the workers and the run's status agree.
"""

from __future__ import annotations

import time
from typing import Any

from ...etcd.gateway import EtcdGateway
from ...keys import RunKeys
from ...process import process_identity
from ...records import json_object
from .layout import JoinKeys, dumps

COUNT_NAMES = ("passed", "failed", "skipped")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED")


def worker_record(
    worker: str,
    state: str,
    counts: dict[str, int],
    given_up: list[str],
    claims: int,
    started: float,
) -> str:
    """What a process writes to ``workers/<worker>`` (JSON): who, where, state and counts."""
    record = {"worker": worker, **process_identity(), "state": state, "counts": counts}
    record.update(given_up=given_up, claims=claims, started=round(started, 3))
    return dumps({**record, "updated": round(time.time(), 3)})


def read_workers(gateway: EtcdGateway, keys: RunKeys) -> list[dict[str, Any]]:
    """One object per process that joined the run's current attempt, oldest first."""
    join = JoinKeys(keys)
    records = gateway.range_prefix(keys.workers).kvs
    if not records:
        return []
    alive = {
        kv.key.removeprefix(join.alive_prefix)
        for kv in gateway.range_prefix(join.alive_prefix, keys_only=True).kvs
    }
    paused = {
        kv.key.removeprefix(join.paused_prefix)
        for kv in gateway.range_prefix(join.paused_prefix, keys_only=True).kvs
    }
    workers = []
    for kv in records:
        record = json_object(kv.value) or {}
        worker = kv.key.removeprefix(keys.workers)
        state = str(record.get("state") or "RUNNING")
        if worker not in alive and state not in ENDED:
            state = "DEAD"
        elif worker in paused and state not in ENDED:
            state = "PAUSED"
        elif state == "PAUSED":
            state = "RUNNING"  # resumed; its record follows with its next write
        counts = record.get("counts")
        if not isinstance(counts, dict):
            counts = {}
        workers.append(
            {
                "worker": worker,
                "host": record.get("host"),
                "pid": record.get("pid"),
                "state": state,
                "alive": worker in alive,
                "counts": {name: int(counts.get(name, 0) or 0) for name in COUNT_NAMES},
                "claims": record.get("claims", 0),
                "given_up": record.get("given_up") or [],
                "started": record.get("started"),
                "updated": record.get("updated"),
            }
        )
    workers.sort(key=lambda w: (w["started"] or 0, w["worker"]))
    return workers


def joined_counts(workers: list[dict[str, Any]], total: int) -> dict[str, int]:
    """The run's counts while it runs: the sum of its processes' counts."""
    counts = {name: sum(w["counts"][name] for w in workers) for name in COUNT_NAMES}
    return {**counts, "remaining": max(0, total - sum(counts.values())), "total": total}
