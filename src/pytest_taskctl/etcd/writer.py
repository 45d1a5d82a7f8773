"""The one batching writer: every plugin write to etcd goes through a :class:`KeyWriter`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from .gateway import MAX_TXN_OPS, EtcdGateway, delete_op, put_op

log = logging.getLogger("pytest_taskctl.store")


class KeyWriter:
    """Writes puts and deletes to etcd from its own thread, batched in transactions.

    Callers never wait for etcd. Pending writes to the same key coalesce
    (the newest value wins); writes are retried until they land or the writer
    is closed. ``flush`` waits (with a deadline) for everything queued so far.
    """

    def __init__(
        self,
        gateway: EtcdGateway,
        *,
        min_interval: float = 0.02,
        max_backoff: float = 1.0,
        on_connection_change: Callable[[bool, BaseException | None], None] | None = None,
    ) -> None:
        self._gateway = gateway
        self._pending: dict[str, tuple[bytes | None, int]] = {}
        self._cond = threading.Condition()
        self._inflight = 0
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

    def put_many(self, values: Mapping[str, str | bytes], lease: int = 0) -> None:
        """Queue several puts that land in the same transaction."""
        with self._cond:
            for key, value in values.items():
                data = value.encode("utf-8") if isinstance(value, str) else value
                self._pending[key] = (data, lease)
            self._cond.notify_all()

    def delete(self, key: str) -> None:
        with self._cond:
            self._pending[key] = (None, 0)
            self._cond.notify_all()

    @property
    def backlog(self) -> int:
        with self._cond:
            return len(self._pending) + self._inflight

    def flush(self, timeout: float | None = 2.0) -> bool:
        """Wait until every write queued so far has landed; ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._inflight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

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
        if self._on_connection_change is not None:
            try:
                self._on_connection_change(healthy, error)
            except Exception:
                log.exception("connection-change callback failed")

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing and (not self._pending or not self.healthy):
                    return
                batch = list(self._pending.items())[:MAX_TXN_OPS]
                for key, _ in batch:
                    del self._pending[key]
                self._inflight = len(batch)
            try:
                ops = [
                    delete_op(key) if value is None else put_op(key, value, lease)
                    for key, (value, lease) in batch
                ]
                self._gateway.txn(ops)
            except Exception as exc:
                with self._cond:
                    for key, entry in batch:
                        self._pending.setdefault(key, entry)  # a newer write wins
                    self._inflight = 0
                    self._cond.notify_all()
                self.failed_batches += 1
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
                # less GIL time taken from the tests.
                time.sleep(self._min_interval)
