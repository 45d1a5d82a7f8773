"""The one batching writer: every write the plugin makes to etcd goes through a :class:`KeyWriter`.

Every etcd call is a round trip plus HTTP and JSON work on the GIL, which
competes with the tests; so writes leave the caller's thread at once and
reach etcd in a few transactions a second, however many tests end meanwhile.

A writer may be *fenced* on ownership: each transaction then carries the
fence's compare clauses (the run's lease key still holds our lease), and a
process that lost the run has its writes refused by etcd itself.

A write may also carry compare clauses of its own (:meth:`KeyWriter.write_guarded`,
:mod:`.guarded`): it rides in the same batch as a nested transaction, so a
refused guard refuses that write alone. ``--join`` acknowledges its tests so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from .gateway import (
    MAX_TXN_OPS,
    ConnectionCallback,
    EtcdGateway,
    delete_op,
    put_op,
    report_connection,
)
from .guarded import GuardedWrite, guarded_write, settle_all

log = logging.getLogger("pytest_taskctl.store")

#: A value, or a function that makes it when its transaction is built.
Value = str | bytes | Callable[[], str | bytes]


class Fence(Protocol):
    """Who may write: the compare clauses every transaction carries, and what a refusal means."""

    def clauses(self) -> list[dict[str, Any]]:
        """Compare clauses that hold while this process owns what it writes."""
        ...

    def refused(self) -> bool:
        """The clauses failed: ``True`` when ownership is lost for good (drop every write),
        ``False`` when it is being renewed (retry later)."""
        ...


class _Write(NamedTuple):
    """One queued write (a tuple: one is made for every finished test's result)."""

    value: bytes | Callable[[], str | bytes] | None  # None: delete the key
    lease: int = 0
    #: A lazy value is written at most this often (seconds); a flush writes it at once.
    interval: float = 0.0


def _write(value: Value, lease: int, interval: float = 0.0) -> _Write:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _Write(data, lease, interval if callable(data) else 0.0)


#: Seconds between two transactions of a busy writer. Each transaction costs
#: a few milliseconds of CPU (JSON, HTTP) that the tests' thread competes for;
#: 0.08 s keeps a result durable within 0.2 s of its test's end.
MIN_INTERVAL = 0.08


class FencePending(RuntimeError):
    """A fenced transaction failed while ownership is being renewed: retried."""


class KeyWriter:
    """Writes puts and deletes to etcd from its own thread, batched in transactions.

    Callers never wait for etcd. Pending writes to the same key coalesce
    (the newest value wins); writes are retried with back-off until they land
    or the writer is closed. After each transaction the thread waits
    ``min_interval``, so writes that arrive meanwhile share the next one.
    ``flush`` waits (with a deadline) for everything queued so far.
    """

    def __init__(
        self,
        gateway: EtcdGateway,
        *,
        min_interval: float = MIN_INTERVAL,
        max_backoff: float = 1.0,
        on_connection_change: ConnectionCallback | None = None,
        fence: Fence | None = None,
    ) -> None:
        self._gateway = gateway
        self._fence = fence
        #: Set once the fence refused us for good: writes are dropped from then on.
        self.fenced = False
        self._pending: dict[str, _Write] = {}
        #: Guarded writes in the order they were queued (never coalesced).
        self._guarded: deque[GuardedWrite] = deque()
        #: When each lazy key last left in a transaction (monotonic), for its interval.
        self._written_at: dict[str, float] = {}
        self._cond = threading.Condition()
        self._inflight = 0
        #: The thread waits for writes to arrive (not in its pause between transactions).
        self._awaiting_work = False
        self._flushing = 0
        self._closing = False
        self._min_interval = min_interval
        self._max_backoff = max_backoff
        self._on_connection_change = on_connection_change
        self.healthy = True
        self.failed_batches = 0
        self._thread = threading.Thread(target=self._run, name="taskctl-writer", daemon=True)
        self._thread.start()

    def put(self, key: str, value: str | bytes, lease: int = 0) -> None:
        self._queue({key: _write(value, lease)})

    def put_many(self, values: Mapping[str, Value], lease: int = 0) -> None:
        """Queue several puts that go out together (a function value is made then)."""
        self._queue({key: _write(value, lease) for key, value in values.items()})

    def put_lazy(
        self, key: str, produce: Callable[[], str | bytes], lease: int = 0, interval: float = 0.0
    ) -> None:
        """Queue a put whose value ``produce()`` makes when its transaction is built.

        For a record that changes on every test (progress): callers queue it on
        each change for the cost of a dict entry, and etcd gets the value of the
        moment, serialized once per transaction. With ``interval`` the key is
        written at most that often; :meth:`flush` and :meth:`close` write it at
        once. ``produce`` runs on the writer's thread and must not call the writer.
        """
        self._queue({key: _write(produce, lease, interval)})

    def delete(self, key: str) -> None:
        self._queue({key: _Write(None)})

    def write_guarded(
        self,
        compare: list[dict[str, Any]],
        writes: Mapping[str, str | bytes | None],
        *,
        lease: int = 0,
        reads: tuple[str, ...] = (),
        on_done: Callable[[GuardedWrite], None] | None = None,
    ) -> GuardedWrite:
        """Queue puts (``None``: deletes) that land, together, only while ``compare`` holds.

        They go out in the next batch as one nested transaction: a failed
        clause refuses these writes alone (``written`` is ``False``, ``found``
        holds the ``reads``), never the batch's others. Guarded writes keep
        their order and are not coalesced; one that shares a key with a write
        already in the batch waits for the next transaction -- so do not
        write a key both ways. ``on_done`` runs on the writer's thread -- or at once on
        the caller's, when the writer is already fenced out: call this without a lock
        that ``on_done`` takes.
        """
        write = guarded_write(compare, writes, lease, reads, on_done)
        if write.weight > MAX_TXN_OPS:
            raise ValueError(f"a guarded write of {write.weight} operations cannot fit a batch")
        with self._cond:
            if not self.fenced:
                self._guarded.append(write)
                if self._awaiting_work:  # as in _queue: a paused writer takes it with the rest
                    self._cond.notify_all()
                return write
        write.settle(None)  # fenced out: nothing of ours is written any more
        return write

    def _queue(self, writes: Mapping[str, _Write]) -> None:
        with self._cond:
            if self.fenced:
                return
            self._pending.update(writes)
            if self._awaiting_work:
                # Only a writer waiting for work is woken: one paused between two
                # transactions takes these with the rest. A wake-up per write was a
                # GIL hand-off per write, paid by the tests' thread.
                self._cond.notify_all()

    @property
    def backlog(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._guarded) + self._inflight

    def flush(self, timeout: float | None = 2.0) -> bool:
        """Wait until every write queued so far has landed; ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1  # lazy keys go out now, whatever their interval
            self._cond.notify_all()
            try:
                while self._pending or self._guarded or self._inflight:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float = 2.0) -> bool:
        """Flush within ``timeout``, then stop the thread. Returns whether all writes landed."""
        done = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(0.5)
        with self._cond:
            unsent, self._guarded = list(self._guarded), deque()
        for write in unsent:
            write.settle(None)
        return done

    def _set_healthy(self, healthy: bool, error: BaseException | None = None) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        report_connection(self._on_connection_change, healthy, error)

    def _due(self, now: float) -> tuple[list[GuardedWrite], list[str], float | None]:
        """What may go out now (one transaction's worth), and when the next lazy key may.

        Guarded writes first (results wait least), in order, up to the first
        that does not fit; then plain keys not written by them. Called with the lock held.
        """
        guarded: list[GuardedWrite] = []
        budget, taken = MAX_TXN_OPS, set[str]()
        for guard in self._guarded:
            if guard.weight > budget or not taken.isdisjoint(guard.writes):
                break
            guarded.append(guard)
            budget -= guard.weight
            taken.update(guard.writes)
        urgent = self._closing or self._flushing > 0
        ready: list[str] = []
        wake: float | None = None
        for key, write in self._pending.items():
            if len(ready) == budget:
                break
            due = self._written_at.get(key, 0.0) + write.interval if write.interval else 0.0
            if key in taken:
                continue  # a guarded write of this key goes first
            if urgent or due <= now:
                ready.append(key)
            elif wake is None or due < wake:
                wake = due
        return guarded, ready, wake

    def _take_batch(self) -> tuple[list[tuple[str, _Write]], list[GuardedWrite]] | None:
        """Wait for writes that are due and take them; ``None`` when the writer is closed."""
        with self._cond:
            while True:
                idle = not self._pending and not self._guarded
                if self._closing and (idle or not self.healthy):
                    return None
                now = time.monotonic()
                guarded, keys, wake = self._due(now)
                if keys or guarded:
                    break
                self._awaiting_work = True
                try:
                    self._cond.wait(None if wake is None else wake - now)
                finally:
                    self._awaiting_work = False
            batch = [(key, self._pending.pop(key)) for key in keys]
            for key, write in batch:
                if write.interval:  # a forced write (no interval) starts no pause
                    self._written_at[key] = now
            for _ in guarded:
                self._guarded.popleft()
            self._inflight = len(batch) + len(guarded)
            return batch, guarded

    @staticmethod
    def _ops(batch: list[tuple[str, _Write]]) -> list[dict[str, Any]]:
        ops = []
        for key, write in batch:
            if write.value is None:
                ops.append(delete_op(key))
                continue
            try:
                value = write.value() if callable(write.value) else write.value
            except Exception:
                log.exception("could not make the value of %s", key)
                continue
            ops.append(put_op(key, value, write.lease))
        return ops

    def _drop_all(self, guarded: list[GuardedWrite]) -> None:
        """Ownership is lost: this batch and every pending or later write are dropped."""
        with self._cond:
            self.fenced = True
            self._pending.clear()
            guarded = guarded + list(self._guarded)
            self._guarded.clear()
        for write in guarded:
            write.settle(None)
        with self._cond:
            self._inflight = 0
            self._cond.notify_all()

    def _send(self, ops: list[dict[str, Any]]) -> dict[str, Any] | None:
        """One transaction under the fence; ``None`` when the fence refused it."""
        request: dict[str, Any] = {"success": ops}
        if self._fence is not None:
            request["compare"] = self._fence.clauses()
        response: dict[str, Any] = self._gateway.call("/kv/txn", request)
        return response if response.get("succeeded", False) else None

    def _run(self) -> None:
        backoff = 0.05
        while (taken := self._take_batch()) is not None:
            batch, guarded = taken
            try:
                ops = self._ops(batch) + [write.op() for write in guarded]
                response = self._send(ops) if ops else {}
                if response is None and self._fence is not None:
                    if self._fence.refused():
                        self._drop_all(guarded)
                        continue
                    raise FencePending("the fence failed while ownership is renewed")
            except Exception as exc:
                with self._cond:
                    for key, write in batch:
                        self._pending.setdefault(key, write)  # a newer write wins
                    self._guarded.extendleft(reversed(guarded))  # first again, in order
                    self._inflight = 0
                    self._cond.notify_all()
                self.failed_batches += 1
                if not isinstance(exc, FencePending):  # etcd answered: not a lost connection
                    self._set_healthy(False, exc)
                with self._cond:
                    if not self._closing:
                        self._cond.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            settle_all(guarded, response or {})  # before inflight is 0: a flush sees them settled
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()
            self._set_healthy(True)
            backoff = 0.05
            if self._min_interval:
                # Let writes accumulate into the next transaction: fewer calls,
                # less GIL time taken from the tests. A flush or close cuts it short.
                until = time.monotonic() + self._min_interval
                with self._cond:
                    while not (self._flushing or self._closing):
                        left = until - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
