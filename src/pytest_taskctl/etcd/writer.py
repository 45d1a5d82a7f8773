"""The one batching writer: every write the plugin makes to etcd goes through a :class:`KeyWriter`.

Every etcd call is a round trip plus HTTP and JSON work on the GIL, which
competes with the tests; so writes leave the caller's thread at once and
reach etcd in a few transactions a second, however many tests end meanwhile.

A writer may be *fenced* on ownership: each transaction then carries the
fence's compare clauses (the run's lease key still holds our lease), and a
process that lost the run has its writes refused by etcd itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .gateway import (
    MAX_TXN_OPS,
    ConnectionCallback,
    EtcdGateway,
    delete_op,
    put_op,
    report_connection,
)

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


@dataclass(frozen=True, slots=True)
class _Write:
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
        self.put_many({key: value}, lease)

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
            return len(self._pending) + self._inflight

    def flush(self, timeout: float | None = 2.0) -> bool:
        """Wait until every write queued so far has landed; ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1  # lazy keys go out now, whatever their interval
            self._cond.notify_all()
            try:
                while self._pending or self._inflight:
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
        return done

    def _set_healthy(self, healthy: bool, error: BaseException | None = None) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        report_connection(self._on_connection_change, healthy, error)

    def _due(self, now: float) -> tuple[list[str], float | None]:
        """Keys that may go out now (at most one transaction's worth), and when the next may.

        Called with the lock held.
        """
        urgent = self._closing or self._flushing > 0
        ready: list[str] = []
        wake: float | None = None
        for key, write in self._pending.items():
            due = self._written_at.get(key, 0.0) + write.interval if write.interval else 0.0
            if urgent or due <= now:
                ready.append(key)
                if len(ready) == MAX_TXN_OPS:
                    break
            elif wake is None or due < wake:
                wake = due
        return ready, wake

    def _take_batch(self) -> list[tuple[str, _Write]] | None:
        """Wait for writes that are due and take them; ``None`` when the writer is closed."""
        with self._cond:
            while True:
                if self._closing and (not self._pending or not self.healthy):
                    return None
                now = time.monotonic()
                keys, wake = self._due(now)
                if keys:
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
            self._inflight = len(batch)
            return batch

    @staticmethod
    def _ops(batch: list[tuple[str, _Write]]) -> list[dict[str, object]]:
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

    def _drop_all(self) -> None:
        """Ownership is lost: this batch and every pending or later write are dropped."""
        with self._cond:
            self.fenced = True
            self._pending.clear()
            self._inflight = 0
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = 0.05
        while (batch := self._take_batch()) is not None:
            try:
                ops = self._ops(batch)
                fence = self._fence.clauses() if self._fence is not None else None
                if ops and not self._gateway.txn(ops, fence) and self._fence is not None:
                    if self._fence.refused():
                        self._drop_all()
                        continue
                    raise FencePending("the fence failed while ownership is renewed")
            except Exception as exc:
                with self._cond:
                    for key, write in batch:
                        self._pending.setdefault(key, write)  # a newer write wins
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
