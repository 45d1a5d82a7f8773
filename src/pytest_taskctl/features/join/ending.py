"""The end of a joined run: the last process out writes the run's status and meta.

Nobody coordinates the end either. Each process leaves (revoking its lease,
which takes its ``alive`` key), and the one that finds no ``alive`` key left
sums every process's record into the run's counts and writes the end status
and the final meta in one transaction. Two processes may both find
themselves last, or one stopped past its lease may come back after the run
ended: the write compares the status with the one read, and a status that is
already an end status is left alone, so the first writer's end stands.
"""

from __future__ import annotations

import logging
import time

from ...etcd.gateway import EtcdGateway, key_missing, put_op, value_equals
from ...records import json_object
from ...status import FINAL_STATUSES
from .layout import JoinKeys, dumps

log = logging.getLogger("pytest_taskctl.plugin")

COUNT_NAMES = ("passed", "failed", "skipped")


def end_run(
    gateway: EtcdGateway, keys: JoinKeys, total: int, cancelled: bool, finished: bool
) -> str | None:
    """Write the run's end status and meta; the status written, ``None`` if it had one.

    Never raises: etcd away at the very end is a warning (``taskctl`` then
    shows the run as interrupted once the shared lease is gone).
    """
    try:
        return _end_run(gateway, keys, total, cancelled, finished)
    except Exception as exc:
        log.warning("join: could not write the run's end status: %s", exc)
        return None


def _end_run(
    gateway: EtcdGateway, keys: JoinKeys, total: int, cancelled: bool, finished: bool
) -> str | None:
    run = keys.run
    current = gateway.get(run.status)
    if current is not None and current.decode("utf-8", "replace") in FINAL_STATUSES:
        return None
    workers = [json_object(kv.value) or {} for kv in gateway.range_prefix(run.workers).kvs]
    counts = dict.fromkeys(COUNT_NAMES, 0)
    for worker in workers:
        for name in counts:
            counts[name] += int((worker.get("counts") or {}).get(name, 0))
    if cancelled:
        status = "CANCELLED"
    elif not finished:
        status = "INTERRUPTED"
    else:
        status = "FAILED" if counts["failed"] else "COMPLETED"
    meta = json_object(gateway.get(run.meta)) or {}
    meta.update(
        status=status,
        ended=time.time(),
        workers=len(workers),
        counts={**counts, "total": total, "remaining": max(0, total - sum(counts.values()))},
    )
    unchanged = key_missing(run.status) if current is None else value_equals(run.status, current)
    if not gateway.txn([put_op(run.meta, dumps(meta)), put_op(run.status, status)], [unchanged]):
        return None  # another process ended it meanwhile
    return status
