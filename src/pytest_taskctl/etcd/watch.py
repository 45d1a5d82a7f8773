"""Watching etcd: one watch stream, and a key range mirrored locally under supervision.

etcd3-py's own ``Watcher`` ends silently when etcd goes away (SIGKILL: the
reconnect raises and its thread dies; SIGTERM: an error chunk without
``code`` makes it raise ``KeyError``), and no event arrives after etcd is
back. :class:`WatchedRange` supervises the watch itself: read at revision R,
watch from R+1, and after any error re-read and re-watch, so readers never
touch the network and no change is missed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .gateway import (
    ConnectionCallback,
    EtcdGateway,
    RangeResult,
    key_value,
    report_connection,
    unb64,
)

log = logging.getLogger("pytest_taskctl.store")


class WatchCancelled(RuntimeError):
    """etcd cancelled the watch (compaction, or an error chunk on shutdown)."""


class WatchStream:
    """The events of one watch request; ``close()`` may be called from any thread."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self.closed = False

    def __iter__(self) -> Iterator[tuple[int, list[tuple[str, str, bytes]]]]:
        """Yield ``(revision, [(type, key, value), ...])`` for each watch response."""
        from etcd3.client import iter_response

        for chunk in iter_response(self._response):
            if not chunk:
                continue
            message = json.loads(chunk)
            if "error" in message:
                # etcd sends an error chunk without "code" when it shuts down;
                # etcd3-py's own Watcher dies on that with a KeyError.
                raise WatchCancelled(str(message["error"].get("message", message["error"])))
            result = message.get("result", message)
            if result.get("canceled") or int(result.get("compact_revision", 0) or 0):
                raise WatchCancelled(result.get("cancel_reason") or "watch cancelled by etcd")
            revision = int(result.get("header", {}).get("revision", 0))
            events = [
                (
                    event.get("type", "PUT"),
                    key_value(event["kv"]).key,
                    unb64(event["kv"].get("value")),
                )
                for event in result.get("events", ())
            ]
            yield revision, events

    def close(self) -> None:
        """Unblock a reader in another thread by shutting the socket down."""
        self.closed = True
        try:
            fileno = self._response.raw._fp.fileno()
            with socket.fromfd(fileno, socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # already closed, or not a socket we can reach
            pass
        with contextlib.suppress(Exception):
            self._response.close()


class WatchedRange:
    """A local copy of a key range kept current by a supervised etcd watch.

    Reads (:meth:`get`, :meth:`wait_until`) never touch the network. If the
    watch breaks -- etcd restarted, a network error, a compaction -- the
    supervisor keeps the last known state, retries with back-off (at most
    ``max_backoff`` seconds apart), re-reads the range at the current revision
    and watches again from the next one.
    """

    def __init__(
        self,
        gateway: EtcdGateway,
        key: str,
        range_end: str | None = None,
        *,
        max_backoff: float = 1.0,
        on_connection_change: ConnectionCallback | None = None,
    ) -> None:
        self._gateway = gateway
        self.key = key
        self.range_end = range_end
        self._values: dict[str, bytes] = {}
        self.revision = 0
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self._max_backoff = max_backoff
        self._on_connection_change = on_connection_change
        self.connected = False
        self.synced = threading.Event()

    # -- lifecycle --------------------------------------------------------------

    def start(self, initial: RangeResult | None = None) -> WatchedRange:
        """Start mirroring. With ``initial`` (a read already made), no extra read."""
        if initial is not None:
            self._replace(initial)
        self._thread = threading.Thread(
            target=self._supervise, args=(initial,), name=f"taskctl-watch {self.key}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- reads ------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        with self._cond:
            return self._values.get(key)

    def snapshot(self) -> dict[str, bytes]:
        with self._cond:
            return dict(self._values)

    def wait_until(
        self, predicate: Callable[[Mapping[str, bytes]], bool], timeout: float | None = None
    ) -> bool:
        """Block until ``predicate(values)`` holds; ``False`` on timeout or stop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not predicate(self._values):
                if self._stopping.is_set():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # -- supervision ------------------------------------------------------------

    def _replace(self, result: RangeResult) -> None:
        with self._cond:
            self._values = result.as_dict()
            self.revision = result.revision
            self._cond.notify_all()
        self.synced.set()

    def _apply(self, revision: int, events: list[tuple[str, str, bytes]]) -> None:
        with self._cond:
            for kind, key, value in events:
                if kind == "DELETE":
                    self._values.pop(key, None)
                else:
                    self._values[key] = value
            self.revision = max(self.revision, revision)
            if events:
                self._cond.notify_all()

    def _set_connected(self, connected: bool, error: BaseException | None = None) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        report_connection(self._on_connection_change, connected, error)

    def _supervise(self, initial: RangeResult | None) -> None:
        backoff = 0.05
        pending = initial
        while not self._stopping.is_set():
            try:
                result = pending or self._gateway.range(self.key, self.range_end)
                pending = None
                self._replace(result)
                self._stream = self._gateway.watch(self.key, self.range_end, result.revision + 1)
                self._set_connected(True)
                backoff = 0.05
                for revision, events in self._stream:
                    self._apply(revision, events)
                    if self._stopping.is_set():
                        break
            except Exception as exc:
                if self._stopping.is_set():
                    break
                if "Read timed out" in str(exc):
                    continue  # an idle watch: re-arm without counting it as a loss
                log.debug("watch on %s broke: %s", self.key, exc)
                self._set_connected(False, exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
            finally:
                if self._stream is not None:
                    self._stream.close()
                    self._stream = None
