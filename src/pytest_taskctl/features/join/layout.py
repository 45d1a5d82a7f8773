"""Key names and transaction pieces of a joined run, written down once.

Every key sits below ``<run>/plan``, ``<run>/queue/`` or ``<run>/workers/``:
all of them sort after ``<run>/paused``, so the watch every process keeps on
the pause/cancel flags never sees the stream of claims and acknowledgements.

* ``plan``: JSON ``{hash, count, chunks, attempt, traceparent, ...}`` -- the
  collection every process must match; ``plan/ids/<n>`` hold the node ids in
  chunks (read only to name a difference);
* ``queue/next``: the first index never handed out;
* ``queue/claim/<index>``: a test being run, attached to its process's lease;
* ``queue/done/<index>``: acknowledged, written with the result in one fenced
  transaction that also deletes the claim;
* ``queue/requeue/<index>``: a claim whose process died, waiting for a taker;
* ``queue/alive/<worker>``: a live process, attached to its lease;
* ``queue/paused/<worker>``: the process runs no test while the run is
  paused (attached to its lease); the run is PAUSED once every live one has it;
* ``workers/<worker>``: a process's record (host, pid, state, counts), kept
  after it leaves so ``taskctl status`` shows who ran what.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ...etcd.gateway import b64
from ...keys import RunKeys

#: Zero-padded indexes keep the claim keys in collection order.
INDEX_WIDTH = 8


@dataclass(frozen=True)
class JoinKeys:
    run: RunKeys

    @property
    def plan(self) -> str:
        return self.run.plan

    def plan_ids(self, chunk: int) -> str:
        return f"{self.run.plan}/ids/{chunk:06d}"

    @property
    def queue(self) -> str:
        return self.run.queue

    @property
    def next(self) -> str:
        return self.run.queue + "next"

    def claim(self, index: int) -> str:
        return f"{self.run.queue}claim/{index:0{INDEX_WIDTH}d}"

    def done(self, index: int) -> str:
        return f"{self.run.queue}done/{index:0{INDEX_WIDTH}d}"

    def requeue(self, index: int) -> str:
        return f"{self.run.queue}requeue/{index:0{INDEX_WIDTH}d}"

    @property
    def alive_prefix(self) -> str:
        return self.run.queue + "alive/"

    def alive(self, worker: str) -> str:
        return self.alive_prefix + worker

    @property
    def paused_prefix(self) -> str:
        return self.run.queue + "paused/"

    def paused_worker(self, worker: str) -> str:
        return self.paused_prefix + worker

    def worker(self, worker: str) -> str:
        return self.run.workers + worker

    def parse(self, key: str) -> tuple[str, str] | None:
        """``("claim", "00000012")``, ``("next", "")``... for a key under ``queue/``."""
        rest = key.removeprefix(self.run.queue)
        if rest == key:
            return None
        kind, _, name = rest.partition("/")
        return kind, name


def key_exists(key: str) -> dict[str, Any]:
    """Compare clause: true while ``key`` exists (its create revision is not 0)."""
    return {"key": b64(key), "target": "CREATE", "result": "GREATER", "create_revision": "0"}


def range_op(key: str) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True)
