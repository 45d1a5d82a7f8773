"""State in etcd: a thin gateway, a watched local view, a batching writer.

etcd3-py's model layer costs ~6 ms of CPU per call (FIELD-NOTES), and its
``Watcher`` dies silently when etcd restarts. So we use etcd3-py as the
transport only -- its session, TLS, auth token and API-prefix detection --
and speak the gRPC-JSON gateway directly (``call_rpc(..., raw=True)``, about
1.2 ms a call). On top of it:

* :class:`WatchedRange` mirrors a key range locally: read at revision R,
  watch from R+1, re-read and re-watch after any error, so readers never
  touch the network and no change is missed;
* :class:`KeyWriter` queues puts and deletes and writes them in batched
  transactions off the caller's thread;
* :class:`StateStore` is the public API of CONTRACT.md on top of both.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..keys import (
    DEFAULT_PREFIX,
    FINAL_STATUSES,
    FLAG_NAMES,
    STATUSES,
    RunKeys,
    flag_is_true,
    normalize_prefix,
    runs_root,
    validate_run_id,
)
from ..records import json_object
from .settings import Endpoint, EtcdSettings, parse_endpoints

log = logging.getLogger("pytest_taskctl.store")

#: etcd's default limit of operations in one transaction is 128.
MAX_TXN_OPS = 100


class EtcdUnavailable(ConnectionError):
    """etcd could not be reached (or refused us); the message says which endpoint."""


def _b64(text: str | bytes) -> str:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    raw = bytearray(prefix.encode("utf-8"))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return "\0"
    raw[-1] += 1
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    lease: int = 0

    @property
    def text(self) -> str:
        return self.value.decode("utf-8", "replace")


@dataclass(frozen=True)
class RangeResult:
    revision: int
    kvs: list[KeyValue]

    def as_dict(self) -> dict[str, bytes]:
        return {kv.key: kv.value for kv in self.kvs}


def _kv(raw: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(raw.get("key")).decode("utf-8", "surrogateescape"),
        value=_unb64(raw.get("value")),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


# -- compare clauses and operations for transactions ----------------------------


def put_op(key: str, value: str | bytes, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def delete_op(key: str, prefix: bool = False) -> dict[str, Any]:
    request = {"key": _b64(key)}
    if prefix:
        request["range_end"] = _b64(prefix_end(key))
    return {"request_delete_range": request}


def key_missing(key: str) -> dict[str, Any]:
    """Compare clause: true when ``key`` does not exist (create revision 0)."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def value_equals(key: str, value: str | bytes) -> dict[str, Any]:
    return {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}


def mod_revision_equals(key: str, revision: int) -> dict[str, Any]:
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def import_etcd3() -> Any:
    """Import etcd3-py without its asyncio client.

    ``import etcd3`` pulls in aiohttp for ``AioClient`` (~0.2 s, a third of
    the plugin's start-up); we use only the synchronous client. The stand-in
    is removed again, so a later ``import etcd3.aio_client`` gets the real one.
    """
    if "etcd3" in sys.modules:
        return sys.modules["etcd3"]
    stand_in = None
    if "aiohttp" not in sys.modules and "etcd3.aio_client" not in sys.modules:
        stand_in = types.ModuleType("etcd3.aio_client")
        stand_in.AioClient = None  # type: ignore[attr-defined]
        sys.modules["etcd3.aio_client"] = stand_in
    try:
        with warnings.catch_warnings():
            # etcd3-py warns (DeprecationWarning) on import and when /version
            # does not answer; users may run with -W error.
            warnings.simplefilter("ignore")
            import etcd3
    finally:
        if stand_in is not None and sys.modules.get("etcd3.aio_client") is stand_in:
            del sys.modules["etcd3.aio_client"]
    return etcd3


class EtcdGateway:
    """Raw calls to etcd's gRPC-JSON gateway through an etcd3-py client."""

    def __init__(self, client: Any, settings: EtcdSettings) -> None:
        self._client = client
        self.settings = settings
        self._auth_lock = threading.Lock()

    @classmethod
    def connect(cls, settings: EtcdSettings) -> EtcdGateway:
        """Connect to the first endpoint that answers; raise :class:`EtcdUnavailable`."""
        etcd3 = import_etcd3()
        errors = []
        for endpoint in settings.endpoints:
            try:
                _probe_version(endpoint, settings)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    client = etcd3.Client(
                        host=endpoint.host,
                        port=endpoint.port,
                        protocol=endpoint.scheme,
                        cert=(settings.cert, settings.key) if settings.cert else (),
                        verify=settings.cacert or (endpoint.scheme == "https"),
                        timeout=settings.timeout,
                        username=settings.user,
                        password=settings.password,
                    )
                # REQUESTS_CA_BUNDLE would otherwise silently replace our CA file.
                client._session.trust_env = False
                gateway = cls(client, settings)
                if settings.user:
                    gateway._authenticate()
                gateway.range("/")  # proves the endpoint, TLS and credentials work
                return gateway
            except Exception as exc:  # any failure means: this endpoint is unusable
                errors.append(f"{endpoint.host}:{endpoint.port}: {_describe_error(exc)}")
        raise EtcdUnavailable("etcd unreachable (" + "; ".join(errors) + ")")

    def close(self) -> None:
        self._client.close()

    def _authenticate(self) -> None:
        """Get a token; like etcdctl, credentials for a server without auth are no error."""
        with self._auth_lock:
            self._client.token = None
            try:
                response = self._client.call_rpc(
                    "/auth/authenticate",
                    {"name": self.settings.user, "password": self.settings.password},
                    encode=False,
                    raw=True,
                ).json()
            except Exception as exc:
                if "authentication is not enabled" in str(exc):
                    return
                raise EtcdUnavailable(f"authentication as {self.settings.user!r} failed") from exc
            self._client.token = response["token"]

    def call(self, method: str, data: Mapping[str, Any], timeout: float | None = None) -> Any:
        """POST one RPC and return its decoded JSON; re-authenticate once if the token expired."""
        kwargs = {"timeout": timeout or self.settings.timeout}
        try:
            return self._client.call_rpc(
                method, dict(data), encode=False, raw=True, **kwargs
            ).json()
        except Exception as exc:
            if not (self.settings.user and "auth token" in str(exc)):
                raise
        self._authenticate()
        return self._client.call_rpc(method, dict(data), encode=False, raw=True, **kwargs).json()

    # -- key-value --------------------------------------------------------------

    def range(self, key: str, range_end: str | None = None, keys_only: bool = False) -> RangeResult:
        request: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            request["range_end"] = _b64(range_end)
        if keys_only:
            request["keys_only"] = True
        response = self.call("/kv/range", request)
        return RangeResult(
            revision=int(response["header"]["revision"]),
            kvs=[_kv(raw) for raw in response.get("kvs", ())],
        )

    def range_prefix(self, prefix: str, keys_only: bool = False) -> RangeResult:
        return self.range(prefix, prefix_end(prefix), keys_only=keys_only)

    def get(self, key: str) -> bytes | None:
        kvs = self.range(key).kvs
        return kvs[0].value if kvs else None

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        request = put_op(key, value, lease)["request_put"]
        return int(self.call("/kv/put", request)["header"]["revision"])

    def delete(self, key: str, prefix: bool = False) -> int:
        request = delete_op(key, prefix)["request_delete_range"]
        return int(self.call("/kv/deleterange", request).get("deleted", 0))

    def txn(
        self,
        success: list[dict[str, Any]],
        compare: list[dict[str, Any]] | None = None,
        failure: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Run one transaction; ``True`` when the compare clauses held."""
        request: dict[str, Any] = {"success": success}
        if compare:
            request["compare"] = compare
        if failure:
            request["failure"] = failure
        return bool(self.call("/kv/txn", request).get("succeeded", False))

    # -- leases -----------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        return int(self.call("/lease/grant", {"TTL": str(ttl)})["ID"])

    def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease; returns the remaining TTL (0 when it is gone)."""
        response = self.call("/lease/keepalive", {"ID": str(lease_id)})
        return int(response.get("result", response).get("TTL", 0))

    def lease_revoke(self, lease_id: int) -> None:
        self.call("/lease/revoke", {"ID": str(lease_id)})

    def lease_ttl(self, lease_id: int) -> int:
        """Remaining seconds of a lease, -1 when it has expired or never existed."""
        return int(self.call("/lease/timetolive", {"ID": str(lease_id)}).get("TTL", -1))

    # -- watch ------------------------------------------------------------------

    def watch(
        self, key: str, range_end: str | None, start_revision: int, idle_timeout: float = 60.0
    ) -> WatchStream:
        create: dict[str, Any] = {"key": _b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            create["range_end"] = _b64(range_end)
        response = self._client.call_rpc(
            "/watch",
            {"create_request": create},
            stream=True,
            encode=False,
            raw=True,
            timeout=(self.settings.timeout, idle_timeout),
        )
        return WatchStream(response)


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
                (event.get("type", "PUT"), _kv(event["kv"]).key, _unb64(event["kv"].get("value")))
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


def _probe_version(endpoint: Endpoint, settings: EtcdSettings) -> None:
    """GET /version ourselves first: etcd3-py turns a failure into an AttributeError."""
    import requests

    with requests.Session() as session:
        session.trust_env = False
        response = session.get(
            f"{endpoint}/version",
            timeout=settings.timeout,
            verify=settings.cacert or (endpoint.scheme == "https"),
            cert=(settings.cert, settings.key or "") if settings.cert else None,
        )
        response.raise_for_status()
        if "etcdserver" not in response.json():
            raise EtcdUnavailable("not an etcd server")


def _describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    if "SSL" in text or "certificate" in text.lower():
        return f"TLS error: {text[:200]}"
    return text[:200]


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
        on_connection_change: Callable[[bool, BaseException | None], None] | None = None,
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
        if self._on_connection_change is not None:
            try:
                self._on_connection_change(connected, error)
            except Exception:
                log.exception("connection-change callback failed")

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


def clear_stale_flags(gateway: EtcdGateway, keys: RunKeys) -> list[str]:
    """Delete ``paused``/``cancelled`` set before the run's last attempt ended.

    A flag written before the previous attempt's final status would pause or
    cancel a re-run (``--resume``) the moment it starts. Flags written after
    that status are a request for the next attempt and stay. Each delete is
    conditional on the flag's revision, so a flag set meanwhile survives.
    """
    status = gateway.range(keys.status).kvs
    if not status or status[0].text not in FINAL_STATUSES:
        return []
    ended_at = status[0].mod_revision
    cleared = []
    for name in FLAG_NAMES:
        kvs = gateway.range(keys.flag(name)).kvs
        if kvs and kvs[0].mod_revision < ended_at:
            compare = [mod_revision_equals(keys.flag(name), kvs[0].mod_revision)]
            if gateway.txn([delete_op(keys.flag(name))], compare=compare):
                cleared.append(f"{name}={kvs[0].text!r}")
    return cleared


def _check_flag_name(name: str) -> str:
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"invalid flag name {name!r}")
    return name


class StateStore:
    """Run state in etcd: flags, status and metadata of runs.

    ``check_flag`` answers from a watched local view once :meth:`watch_run`
    has been called for a run (the plugin does this for its own run), so it
    costs no round trip; otherwise it reads etcd once. ``wait_for_flag`` reads
    the key at revision R and watches from R+1, so no change is missed.
    """

    #: The run-level keys (``<run>/<name>``); results and pauses sit below them.
    RUN_LEAVES = ("cancelled", "lease", "meta", "paused", "status")
    #: Keys per read when listing run ids.
    RUN_IDS_PAGE = 1000

    def __init__(
        self,
        etcd: EtcdSettings | str | None = None,
        prefix: str = DEFAULT_PREFIX,
        *,
        gateway: EtcdGateway | None = None,
    ) -> None:
        if isinstance(etcd, str):
            etcd = EtcdSettings(parse_endpoints(etcd, "StateStore(etcd=...)"))
        self.settings = etcd or EtcdSettings.resolve()
        self.prefix = normalize_prefix(prefix)
        self.gateway = gateway or EtcdGateway.connect(self.settings)
        self._views: dict[str, WatchedRange] = {}
        self._lock = threading.Lock()

    def keys(self, run_id: str) -> RunKeys:
        return RunKeys(self.prefix, validate_run_id(run_id))

    # -- flags ------------------------------------------------------------------

    def watch_run(self, run_id: str, **kwargs: Any) -> WatchedRange:
        """Start (once) and return the watched view of the run's control keys."""
        with self._lock:
            view = self._views.get(run_id)
            if view is None:
                start, end = self.keys(run_id).control_range
                view = WatchedRange(self.gateway, start, end, **kwargs)
                view.start(self.gateway.range(start, end))
                self._views[run_id] = view
            return view

    def check_flag(self, run_id: str, name: str) -> bool:
        key = self.keys(run_id).flag(_check_flag_name(name))
        view = self._views.get(run_id)
        if view is not None and view.key <= key < (view.range_end or ""):
            return flag_is_true(view.get(key))
        return flag_is_true(self.gateway.get(key))

    def wait_for_flag(
        self, run_id: str, name: str, state: bool = False, timeout: float | None = None
    ) -> bool:
        """Block until the flag equals ``state``: ``True`` when reached, ``False`` on timeout."""
        key = self.keys(run_id).flag(_check_flag_name(name))

        def reached(values: Mapping[str, bytes]) -> bool:
            return flag_is_true(values.get(key)) == state

        view = self._views.get(run_id)
        if view is not None and view.key <= key < (view.range_end or ""):
            return view.wait_until(reached, timeout)
        watch = WatchedRange(self.gateway, key)
        watch.start(self.gateway.range(key))
        try:
            return watch.wait_until(reached, timeout)
        finally:
            watch.stop()

    def set_flag(self, run_id: str, name: str, value: str = "1") -> None:
        self.gateway.put(self.keys(run_id).flag(_check_flag_name(name)), value)

    def clear_flag(self, run_id: str, name: str) -> None:
        self.gateway.delete(self.keys(run_id).flag(_check_flag_name(name)))

    # -- status and metadata ----------------------------------------------------

    def get_status(self, run_id: str) -> str | None:
        value = self.gateway.get(self.keys(run_id).status)
        return value.decode("utf-8", "replace") if value is not None else None

    def set_status(self, run_id: str, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        self.gateway.put(self.keys(run_id).status, status)

    def get_meta(self, run_id: str) -> dict[str, Any] | None:
        return json_object(self.gateway.get(self.keys(run_id).meta))

    # -- runs -------------------------------------------------------------------

    def run_exists(self, run_id: str) -> bool:
        """Whether any key exists under ``<run>/`` (also only results or pauses)."""
        root = self.keys(run_id).root + "/"
        return bool(self._key_names(root, prefix_end(root), limit=1)[0])

    def run_ids(self) -> list[str]:
        """Ids of the runs under the prefix (any key under ``<run>/``), in key order.

        Keys only, a page at a time; a page that ends inside a run's results
        skips the rest of them, so the cost grows with the runs, not the tests.
        """
        root = runs_root(self.prefix)
        end = prefix_end(root)
        cursor = root
        ids: list[str] = []
        while True:
            keys, more = self._key_names(cursor, end, limit=self.RUN_IDS_PAGE)
            for key in keys:
                run_id, slash, _ = key[len(root) :].partition("/")
                if run_id and (not ids or ids[-1] != run_id):
                    ids.append(run_id)
            if not more or not keys:
                return ids
            run_id, slash, _ = keys[-1][len(root) :].partition("/")
            # Past the rest of that run's keys; a bare "<root><id>" key has none.
            cursor = prefix_end(f"{root}{run_id}/") if slash else keys[-1] + "\0"

    def leaf_ranges(self, run_id: str) -> list[tuple[str, str | None]]:
        """The key ranges that hold a run's run-level keys (:attr:`RUN_LEAVES`) and no other.

        ``cancelled`` < ``lease`` < ``meta`` < ``paused`` are adjacent; ``status``
        sorts after ``pauses/`` and ``results/`` and needs a range of its own.
        """
        return self._leaf_ranges(self.keys(run_id))

    @staticmethod
    def _leaf_ranges(keys: RunKeys) -> list[tuple[str, str | None]]:
        start, end = keys.control_range
        return [(start, end), (keys.status, None)]

    def run_leaves(self, run_id: str) -> dict[str, bytes]:
        """``{"status": b"...", "meta": b"...", ...}``: the run-level keys that exist.

        One transaction, so status and meta come from the same revision;
        results and pauses are never read.
        """
        return self.runs_leaves([validate_run_id(run_id)]).get(run_id, {})

    def runs_leaves(self, run_ids: list[str]) -> dict[str, dict[str, bytes]]:
        """:meth:`run_leaves` of many runs (e.g. :meth:`run_ids`), in a few transactions.

        Ids are taken as listed, not validated: whatever is in etcd is shown.
        """
        ranges = [
            (keys, start, end)
            for keys in (RunKeys(self.prefix, run_id) for run_id in run_ids)
            for start, end in self._leaf_ranges(keys)
        ]
        leaves: dict[str, dict[str, bytes]] = {run_id: {} for run_id in run_ids}
        for first in range(0, len(ranges), MAX_TXN_OPS):
            chunk = ranges[first : first + MAX_TXN_OPS]
            ops = [
                {"request_range": {"key": _b64(start), **({"range_end": _b64(end)} if end else {})}}
                for _, start, end in chunk
            ]
            responses = self.gateway.call("/kv/txn", {"success": ops}).get("responses", [])
            for (keys, _, _), response in zip(chunk, responses, strict=True):
                for raw in response.get("response_range", {}).get("kvs", ()):
                    kv = _kv(raw)
                    name = kv.key.removeprefix(keys.root + "/")
                    if name in self.RUN_LEAVES:
                        leaves[keys.run_id][name] = kv.value
        return leaves

    def list_runs(self) -> dict[str, dict[str, bytes]]:
        """``{run_id: {"status": b"...", "meta": b"...", ...}}`` for every run under the prefix.

        Only the run-level keys are returned, not results or pauses; a run that
        has none of them is left out.
        """
        runs = self.runs_leaves(self.run_ids())
        return {run_id: leaves for run_id, leaves in runs.items() if leaves}

    def _key_names(self, start: str, end: str, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` key names in ``[start, end)``, and whether more follow."""
        response = self.gateway.call(
            "/kv/range",
            {"key": _b64(start), "range_end": _b64(end), "keys_only": True, "limit": limit},
        )
        keys = [
            _unb64(raw.get("key")).decode("utf-8", "surrogateescape")
            for raw in response.get("kvs", ())
        ]
        return keys, bool(response.get("more"))

    def close(self) -> None:
        with self._lock:
            views = list(self._views.values())
            self._views.clear()
        for view in views:
            view.stop()
        self.gateway.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
