"""Acknowledgements of a joined process: each result written with its ``done``, fenced.

A result is written together with ``queue/done/<index>`` and the deletion of
the claim, in one transaction that compares the claim key's revision with
the one our claim (or our start mark) wrote: a process that was presumed
dead cannot overwrite the result of the process that took over. They are
sent by one thread of their own, never a test's, batched when several wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ...etcd.gateway import delete_op, mod_revision_equals, put_op
from .claims import Ack, Claim
from .layout import JoinKeys, dumps

log = logging.getLogger("pytest_taskctl.plugin")

#: Acknowledgements sent in one transaction when several are waiting.
ACK_BATCH = 32

#: ``(success ops, compares) -> response`` with ``succeeded`` a bool (the queue's counted txn).
Txn = Callable[[list[dict[str, Any]], list[dict[str, Any]]], dict[str, Any]]


class Acknowledgements:
    """The queue of results to land, and the thread that lands them."""

    def __init__(self, keys: JoinKeys, worker_id: str, txn: Txn) -> None:
        self.keys = keys
        self.worker_id = worker_id
        self._txn = txn
        self._acks: deque[Ack] = deque()
        self._unlanded: list[Ack] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="taskctl-join-acks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def ack(self, claim: Claim, result_key: str, result: str) -> Ack:
        """Queue the result and acknowledgement of a claimed test (off the test's thread)."""
        entry = Ack(claim, result_key, result, threading.Event())
        with self._cond:
            self._acks.append(entry)
            self._unlanded = [e for e in self._unlanded if not e.landed.is_set()]
            self._unlanded.append(entry)
            self._cond.notify_all()
        return entry

    def _ops(self, batch: list[Ack]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        ops: list[dict[str, Any]] = []
        compare: list[dict[str, Any]] = []
        for entry in batch:
            index = entry.claim.index
            compare.append(mod_revision_equals(self.keys.claim(index), entry.claim.revision))
            done = dumps({"w": self.worker_id})
            # done before the claim's deletion: watchers see it first and find no orphan.
            ops += [put_op(self.keys.done(index), done), delete_op(self.keys.claim(index))]
            ops.append(put_op(entry.result_key, entry.result))
        return ops, compare

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._acks) or self._stopping.is_set())
                if not self._acks:
                    return
                batch = [self._acks.popleft() for _ in range(min(ACK_BATCH, len(self._acks)))]
            self._send(batch)

    def _send(self, batch: list[Ack]) -> None:
        delay = 0.05
        while True:
            try:
                if self._txn(*self._ops(batch))["succeeded"]:
                    break
                if len(batch) > 1:  # one of them lost its claim: find which, one by one
                    for entry in batch:
                        self._send([entry])
                    return
                log.warning(
                    "join: the result of test #%d was not recorded: its claim was handed to "
                    "another process while this one was away",
                    batch[0].claim.index,
                )
                break
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.debug("join: acknowledgement failed, retrying: %s", exc)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        for entry in batch:
            entry.landed.set()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued acknowledgement was sent (or refused by its fence)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            pending = list(self._unlanded)
        return all(e.landed.wait(max(0.0, deadline - time.monotonic())) for e in pending)

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(2.0)
