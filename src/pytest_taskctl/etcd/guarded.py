"""Guarded writes: puts and deletes that land only while their own compare clauses hold.

A joined run acknowledges a test by writing its result, ``queue/done/<i>`` and
the deletion of its claim -- but only while the claim is still the one this
process wrote: a process presumed dead (stopped past its lease) must not
overwrite the result of the process that took over. Those writes go through
the one batching :class:`~.writer.KeyWriter` like every other, and a refused
guard must not fail the rest of its batch. etcd (3.3 and later, so 3.4 and
3.5) runs a transaction inside a transaction: each guarded write is one
nested ``request_txn`` whose clauses are judged on their own, against the
state before the outer transaction, so the other writes of the batch land
whatever it decides. A refused write may read keys instead (``reads``), so
its owner learns what is there now -- for instance that its own earlier try
already landed, when a response lost to a failing member made the writer
send it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .gateway import b64, delete_op, key_value, put_op

log = logging.getLogger("pytest_taskctl.store")


@dataclass(eq=False)
class GuardedWrite:
    """Writes that go out together, all or none, while ``compare`` holds.

    ``writes`` maps each key to its value, ``None`` to delete it; they are
    applied in that order (a watcher sees them in that order, at one revision).
    """

    compare: list[dict[str, Any]]
    writes: dict[str, bytes | None]
    lease: int = 0
    #: Keys read when the guard refuses the writes (into :attr:`found`).
    reads: tuple[str, ...] = ()
    #: Called once settled, on the writer's thread (on the caller's when the writer is
    #: fenced out already); it must not wait for the writer.
    on_done: Callable[[GuardedWrite], None] | None = None
    #: ``True`` written; ``False`` refused by ``compare``; ``None`` never sent
    #: (the writer closed or was fenced out first).
    written: bool | None = None
    #: What ``reads`` found when refused: key -> value of the keys that exist.
    found: dict[str, bytes] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def keys(self) -> set[str]:
        return set(self.writes)

    @property
    def weight(self) -> int:
        """Operations it adds to a transaction (itself, its clauses, writes and reads)."""
        return 1 + len(self.compare) + len(self.writes) + len(self.reads)

    def op(self) -> dict[str, Any]:
        """The nested transaction, an operation of the writer's batch."""
        success = [
            delete_op(key) if value is None else put_op(key, value, self.lease)
            for key, value in self.writes.items()
        ]
        request: dict[str, Any] = {"compare": self.compare, "success": success}
        if self.reads:
            request["failure"] = [{"request_range": {"key": b64(key)}} for key in self.reads]
        return {"request_txn": request}

    def settle(self, written: bool | None, response: Mapping[str, Any] | None = None) -> None:
        """Record etcd's answer (the nested ``response_txn``), then tell the owner."""
        self.written = written
        if written is False and response is not None:
            for answer in response.get("responses", ()):
                for raw in answer.get("response_range", {}).get("kvs", ()):
                    kv = key_value(raw)
                    self.found[kv.key] = kv.value
        self.done.set()
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception:
                log.exception("the callback of a guarded write failed")


def guarded_write(
    compare: list[dict[str, Any]],
    writes: Mapping[str, str | bytes | None],
    lease: int = 0,
    reads: tuple[str, ...] = (),
    on_done: Callable[[GuardedWrite], None] | None = None,
) -> GuardedWrite:
    encoded = {
        key: value.encode("utf-8") if isinstance(value, str) else value
        for key, value in writes.items()
    }
    return GuardedWrite(list(compare), encoded, lease, tuple(reads), on_done)


def settle_all(writes: list[GuardedWrite], response: Mapping[str, Any]) -> None:
    """Settle the guarded writes at the end of a batch from the outer transaction's answer.

    The nested transactions are the batch's last operations, in order.
    """
    if not writes:
        return
    answers = response.get("responses", ())[-len(writes) :]
    for write, answer in zip(writes, answers, strict=True):
        nested = answer.get("response_txn", {})
        write.settle(bool(nested.get("succeeded", False)), nested)
