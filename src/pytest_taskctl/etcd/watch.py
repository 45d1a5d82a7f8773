"""Watching etcd: one watch stream, and a key range mirrored locally under supervision.

A watch stream ends when etcd goes away (SIGKILL: the connection breaks;
SIGTERM: etcd sends an error message without ``code`` first), and nothing
re-creates it by itself -- client libraries that try (etcd3-py's
``Watcher``) die silently on exactly these two. :class:`WatchedRange`
supervises the watch itself: read at revision R, watch from R+1, and after
any error re-read and re-watch, so readers never touch the network and no
change is missed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from .gateway import (
    ConnectionCallback,
    EtcdGateway,
    RangeResult,
    key_value,
    report_connection,
)
from .member import JsonStream

log = logging.getLogger("pytest_taskctl.store")


class WatchCancelled(RuntimeError):
    """etcd cancelled the watch (an error chunk on shutdown, or a compaction)."""


class WatchCompacted(WatchCancelled):
    """The watch started below etcd's compacted revision: re-read, then watch again.

    Not a lost connection: etcd answered, the history we asked for is gone.
    """


#: One watch event: ``(type, key, value, mod_revision)``; type is ``PUT`` or ``DELETE``.
Event = tuple[str, str, bytes, int]


class WatchStream:
    """The events of one watch request; ``close()`` may be called from any thread.

    ``resets`` is the gateway's :attr:`~.gateway.EtcdGateway.resets` when the
    stream was made: a stream older than the gateway's last move is on a
    connection the gateway gave up on.
    """

    def __init__(self, messages: JsonStream, resets: int = 0) -> None:
        self._messages = messages
        self.resets = resets
        self.closed = False

    def __iter__(self) -> Iterator[tuple[int, list[Event]]]:
        """Yield ``(revision, [(type, key, value, mod_revision), ...])`` for each response."""
        for message in self._messages:
            if not isinstance(message, dict):
                continue
            if "error" in message:
                # etcd sends an error message without "code" when it shuts down.
                error = message["error"]
                text = error.get("message", error) if isinstance(error, dict) else error
                raise WatchCancelled(str(text))
            result = message.get("result", message)
            if int(result.get("compact_revision", 0) or 0):
                raise WatchCompacted(f"revisions up to {result['compact_revision']} were compacted")
            if result.get("canceled"):
                raise WatchCancelled(result.get("cancel_reason") or "watch cancelled by etcd")
            revision = int(result.get("header", {}).get("revision", 0))
            events = []
            for event in result.get("events", ()):
                kv = key_value(event["kv"])
                events.append((event.get("type", "PUT"), kv.key, kv.value, kv.mod_revision))
            yield revision, events

    def close(self) -> None:
        """Unblock a reader in another thread; the stream's connection is closed."""
        self.closed = True
        self._messages.close()


#: Told ``(changes, revision)`` after the view changed: each changed key's new value
#: (``None``: deleted). Runs on the view's own threads; must not block.
ChangeListener = Callable[[Mapping[str, "bytes | None"], int], None]


def open_stream(
    gateway: EtcdGateway, key: str, range_end: str | None, start_revision: int
) -> WatchStream:
    """Watch ``[key, range_end)`` from ``start_revision`` on."""
    return WatchStream(*gateway.open_watch(key, range_end, start_revision))


class WatchedRange:
    """A local copy of a key range kept current by a supervised etcd watch.

    Reads (:meth:`get`, :meth:`wait_until`) never touch the network. If the
    watch breaks -- etcd restarted, a network error, a compaction -- the
    supervisor keeps the last known state, retries with back-off (at most
    ``max_backoff`` seconds apart), re-reads the range at the current revision
    and watches again from the next one. A connection can also go silent
    without breaking (no error, no data: a proxy or NAT that dropped it), and
    etcd sends nothing on an idle watch to tell; so a second thread reads the
    range every ``liveness_interval`` seconds (default: the gateway's
    settings) and re-syncs from that read when the watch has not delivered
    what the read shows, or when the read needed a fresh connection.
    """

    def __init__(
        self,
        gateway: EtcdGateway,
        key: str,
        range_end: str | None = None,
        *,
        max_backoff: float = 1.0,
        on_connection_change: ConnectionCallback | None = None,
        liveness_interval: float | None = None,
    ) -> None:
        self._gateway = gateway
        self.key = key
        self.range_end = range_end
        self._values: dict[str, bytes] = {}
        self._revisions: dict[str, int] = {}
        self.revision = 0
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._stream: WatchStream | None = None
        #: Bumped by every full read applied; events of an older stream are dropped.
        self._generation = 0
        #: A read the supervisor watches on from (set by a re-sync), instead of reading.
        self._resume_from: RangeResult | None = None
        self._threads: list[threading.Thread] = []
        self._max_backoff = max_backoff
        self._on_connection_change = on_connection_change
        self._listeners: list[ChangeListener] = []
        if liveness_interval is None:
            liveness_interval = gateway.settings.liveness_interval
        self._liveness_interval = liveness_interval
        self._connection_lock = threading.Lock()
        self.connected = False
        self.synced = threading.Event()
        #: Re-syncs made because the watch fell silent (for logs and tests).
        self.resyncs = 0

    # -- lifecycle --------------------------------------------------------------

    def start(self, initial: RangeResult | None = None) -> WatchedRange:
        """Start mirroring. With ``initial`` (a read already made), no extra read."""
        if initial is not None:
            self._replace(initial)
            self._resume_from = initial
        targets = [(self._supervise, "watch")]
        if self._liveness_interval:
            targets.append((self._check_liveness, "liveness"))
        for target, what in targets:
            thread = threading.Thread(target=target, name=f"taskctl-{what} {self.key}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        with self._cond:
            self._cond.notify_all()
        # Only the supervisor is joined: closing its stream ends it at once. The
        # liveness thread may be inside a read of up to ``liveness_timeout``; it
        # ends after that read, and touches nothing once it sees the stop.
        supervisor = self._threads[0] if self._threads else None
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout)

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(changes, revision)`` after each change the view takes in."""
        self._listeners.append(listener)

    @property
    def generation(self) -> int:
        """Bumped by every full read: a listener can tell a re-sync from an event."""
        with self._cond:
            return self._generation

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

    # -- changes ----------------------------------------------------------------

    def _replace(self, result: RangeResult) -> None:
        """Take a full read as the view's state (called with no lock held)."""
        with self._cond:
            self._generation += 1
            before = self._values
            self._values = result.as_dict()
            self._revisions = {kv.key: kv.mod_revision for kv in result.kvs}
            self.revision = result.revision
            changes: dict[str, bytes | None] = {
                key: self._values.get(key)
                for key in before.keys() | self._values.keys()
                if before.get(key) != self._values.get(key)
            }
            self._cond.notify_all()
        self.synced.set()
        self._tell(changes, result.revision)

    def _apply(self, generation: int, revision: int, events: list[Event]) -> None:
        changes: dict[str, bytes | None] = {}
        with self._cond:
            if generation != self._generation:
                return  # a stream that a re-sync replaced
            for kind, key, value, mod_revision in events:
                before = self._values.get(key)
                if kind == "DELETE":
                    self._values.pop(key, None)
                    self._revisions.pop(key, None)
                    after = None
                else:
                    self._values[key] = after = value
                    self._revisions[key] = mod_revision
                if before != after or key in changes:
                    changes[key] = after
            self.revision = max(self.revision, revision)
            if events:
                self._cond.notify_all()
        self._tell(changes, revision)

    def _tell(self, changes: Mapping[str, bytes | None], revision: int) -> None:
        if not changes:
            return
        for listener in self._listeners:
            try:
                listener(changes, revision)
            except Exception:
                log.exception("change listener of %s failed", self.key)

    def _set_connected(self, connected: bool, error: BaseException | None = None) -> None:
        with self._connection_lock:
            if connected == self.connected:
                return
            self.connected = connected
        report_connection(self._on_connection_change, connected, error)

    # -- supervision ------------------------------------------------------------

    def _supervise(self) -> None:
        backoff = 0.05
        while not self._stopping.is_set():
            streaming = False
            stream: WatchStream | None = None
            try:
                with self._cond:
                    result, self._resume_from = self._resume_from, None
                if result is None:
                    # Serializable: after a failover the next member answers while
                    # the cluster still elects a leader.
                    result = self._gateway.range(self.key, self.range_end, serializable=True)
                    self._replace(result)
                stream = open_stream(self._gateway, self.key, self.range_end, result.revision + 1)
                with self._cond:
                    if self._resume_from is not None or self._stopping.is_set():
                        continue  # re-synced meanwhile: watch from the newer read
                    self._stream, generation = stream, self._generation
                self._set_connected(True)
                streaming = True
                for revision, events in stream:
                    self._apply(generation, revision, events)
                    if self._stopping.is_set():
                        break
                backoff = 0.05
            except Exception as exc:
                if self._stopping.is_set():
                    break
                if streaming and stream is not None:
                    # The stream broke (or a re-sync closed it, or etcd compacted past
                    # it): read again at once; only a failed read is a lost etcd.
                    log.debug("watch on %s ended: %s", self.key, exc)
                    if not stream.closed:
                        self._stopping.wait(0.05)
                    continue
                log.debug("watch on %s broke: %s", self.key, exc)
                self._set_connected(False, exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
            finally:
                with self._cond:
                    if self._stream is stream:
                        self._stream = None
                if stream is not None:
                    stream.close()

    def _check_liveness(self) -> None:
        """Every ``liveness_interval``: read the range and re-sync if the watch fell behind."""
        interval = self._liveness_interval
        timeout = self._gateway.settings.liveness_timeout
        while not self._stopping.wait(interval):
            stream = self._stream
            if stream is None:
                continue  # the supervisor is (re)connecting
            try:
                read = self._gateway.range(self.key, self.range_end, timeout=timeout)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                # Neither the pooled connection nor a fresh one answered: etcd is
                # away or the path is silent. The stream is as dead: let the
                # supervisor reconnect, with back-off.
                log.debug("liveness read of %s failed: %s", self.key, exc)
                self._set_connected(False, exc)
                stream.close()
                continue
            moved = stream.resets != self._gateway.resets
            if moved or not self._caught_up(read, interval):
                self._resync(read, stream, "on a connection given up" if moved else "behind")

    def _caught_up(self, read: RangeResult, grace: float) -> bool:
        """Whether the view shows ``read``'s state or a newer one, within ``grace`` seconds.

        A live watch delivers an event about as fast as a read returns; a view
        still older than the read after ``grace`` has a watch that is not
        delivering. Keys the read does not have must be newer than it in the view.
        """

        def current(_values: Mapping[str, bytes]) -> bool:
            for kv in read.kvs:
                if self._revisions.get(kv.key, 0) < kv.mod_revision:
                    return False
            present = {kv.key for kv in read.kvs}
            return all(
                key in present or revision > read.revision
                for key, revision in self._revisions.items()
            )

        return self.wait_until(current, grace)

    def _resync(self, read: RangeResult, stream: WatchStream, why: str) -> None:
        """Take ``read`` as the state and have the supervisor watch on from it."""
        if self._stopping.is_set():
            return
        self.resyncs += 1
        log.info(
            "watch on %s was silent (%s); re-synced at revision %d", self.key, why, read.revision
        )
        self._replace(read)
        with self._cond:
            self._resume_from = read
            # The stream in use now, which may be newer than the one checked: the
            # re-sync made its events stale (generation), so it must go too.
            current = self._stream
        stream.close()
        if current is not None and current is not stream:
            current.close()
        self._set_connected(True)
