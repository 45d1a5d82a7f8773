"""Raw calls to etcd's gRPC-JSON gateway: JSON over ``http.client``, nothing in between.

A client library's model layer costs milliseconds of CPU per call, and
etcd3-py's ``Watcher`` dies silently when etcd restarts; the gateway's JSON
is simple enough to speak directly (a put or a one-key range is one small
POST). This module adds what makes one gateway usable by many threads and
members: the auth token, failover to the next member, and the small
builders for transaction operations and compare clauses, so every caller
writes them the same way. How one member is reached -- connections, TLS,
our own version probe -- is in :mod:`.member` and :mod:`.endpoints`.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .endpoints import EtcdError as EtcdError  # re-exported: etcd refused a request
from .endpoints import describe_error, is_connection_failure, tls_context
from .member import JsonStream, MemberClient
from .settings import Endpoint, EtcdSettings

log = logging.getLogger("pytest_taskctl.store")

#: etcd's default limit of operations in one transaction is 128.
MAX_TXN_OPS = 100


class EtcdUnavailable(ConnectionError):
    """etcd could not be reached (or refused us); the message says which endpoint."""


#: Told ``(connected, error)`` when a part (watch, writer) loses or regains etcd.
ConnectionCallback = Callable[[bool, "BaseException | None"], None]


def report_connection(
    callback: ConnectionCallback | None, connected: bool, error: BaseException | None
) -> None:
    """Call a connection-change callback; its failure is logged, never raised into our thread."""
    if callback is not None:
        try:
            callback(connected, error)
        except Exception:
            log.exception("connection-change callback failed")


def b64(text: str | bytes) -> str:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
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


def key_value(raw: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=unb64(raw.get("key")).decode("utf-8", "surrogateescape"),
        value=unb64(raw.get("value")),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


# -- compare clauses and operations for transactions ----------------------------


def put_op(key: str, value: str | bytes, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def delete_op(key: str, prefix: bool = False) -> dict[str, Any]:
    request = {"key": b64(key)}
    if prefix:
        request["range_end"] = b64(prefix_end(key))
    return {"request_delete_range": request}


def key_missing(key: str) -> dict[str, Any]:
    """Compare clause: true when ``key`` does not exist (create revision 0)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def value_equals(key: str, value: str | bytes) -> dict[str, Any]:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def mod_revision_equals(key: str, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


class EtcdGateway:
    """Raw calls to etcd's gRPC-JSON gateway, one member at a time.

    With several endpoints, a call that fails for want of a connection (refused,
    reset, timed out, a member without leader) moves the gateway to the next
    member and is tried once more there; with one endpoint it is tried once
    more on a fresh connection, since a pooled keep-alive connection may have
    gone silent. :attr:`resets` counts these moves, so a watch made before one
    knows its stream may be on the abandoned path.
    """

    def __init__(
        self, client: MemberClient, settings: EtcdSettings, endpoint: Endpoint | None = None
    ) -> None:
        self._client = client
        self.settings = settings
        #: The member in use.
        self.endpoint = endpoint or client.endpoint
        self._version = dict(client.version)
        self._auth_lock = threading.Lock()
        self._switch_lock = threading.Lock()
        self.resets = 0

    @classmethod
    def connect(cls, settings: EtcdSettings) -> EtcdGateway:
        """Connect to the first endpoint that answers; raise :class:`EtcdUnavailable`."""
        errors = []
        https = any(endpoint.scheme == "https" for endpoint in settings.endpoints)
        try:
            context = tls_context(settings) if https else None
        except (OSError, ValueError) as exc:  # an unreadable CA, cert or key file
            raise EtcdUnavailable(f"etcd unreachable (TLS files: {describe_error(exc)})") from exc
        for endpoint in settings.endpoints:
            gateway = None
            try:
                gateway = cls(MemberClient.probe(endpoint, settings, context), settings, endpoint)
                if settings.user:
                    gateway._authenticate()
                gateway.range("/")  # proves the endpoint, TLS and credentials work
                return gateway
            except Exception as exc:  # any failure means: this endpoint is unusable
                if gateway is not None:
                    gateway.close()
                errors.append(f"{endpoint.host}:{endpoint.port}: {describe_error(exc)}")
        raise EtcdUnavailable("etcd unreachable (" + "; ".join(errors) + ")")

    @property
    def version(self) -> dict[str, str]:
        """``{"etcdserver": ..., "etcdcluster": ...}`` as the first member answered ``/version``."""
        return dict(self._version)

    def close(self) -> None:
        """Close the idle connections; streams close with their watches."""
        self._client.close()

    def _authenticate(self) -> None:
        """Get a token; like etcdctl, credentials for a server without auth are no error."""
        with self._auth_lock:
            client = self._client
            try:
                response = client.post(
                    "/auth/authenticate",
                    {"name": self.settings.user, "password": self.settings.password},
                    self.settings.timeout,
                    auth=False,  # an expired token must not ride along
                )
            except Exception as exc:
                client.token = None
                if "authentication is not enabled" in str(exc):
                    return
                raise EtcdUnavailable(f"authentication as {self.settings.user!r} failed") from exc
            client.token = response["token"]

    def _replace_connection(self, failed: MemberClient, error: BaseException) -> None:
        """After a connection failure on client ``failed``: the next member, or fresh connections.

        Threads that failed on the same client at once move the gateway once.
        """
        with self._switch_lock:
            if self._client is not failed:
                return  # another thread moved already
            self.resets += 1
            endpoints = self.settings.endpoints
            if len(endpoints) == 1:
                failed.reset()
                return
            index = endpoints.index(self.endpoint) if self.endpoint in endpoints else -1
            following = endpoints[(index + 1) % len(endpoints)]
            client = MemberClient(following, self.settings, self._version, context=failed.context)
            client.token = failed.token
            self._client, previous, self.endpoint = client, self.endpoint, following
        log.warning(
            "etcd member %s:%s failed (%s); using %s:%s",
            previous.host,
            previous.port,
            describe_error(error),
            following.host,
            following.port,
        )
        failed.close()

    def _post(self, method: str, data: Mapping[str, Any], timeout: float) -> Any:
        """POST through the current member; once more after a connection failure."""
        client = self._client
        try:
            return client.post(method, data, timeout)
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            self._replace_connection(client, exc)
        return self._client.post(method, data, timeout)

    def call(self, method: str, data: Mapping[str, Any], timeout: float | None = None) -> Any:
        """POST one RPC and return its decoded JSON; re-authenticate once if the token expired."""
        read_timeout = timeout or self.settings.timeout
        try:
            return self._post(method, data, read_timeout)
        except Exception as exc:
            if not (self.settings.user and "auth token" in str(exc)):
                raise
        self._authenticate()
        return self._post(method, data, read_timeout)

    # -- key-value --------------------------------------------------------------

    def range(
        self,
        key: str,
        range_end: str | None = None,
        keys_only: bool = False,
        timeout: float | None = None,
        serializable: bool = False,
    ) -> RangeResult:
        """Read a key or range; ``serializable``: the member's own data, no leader needed.

        A serializable read answers while the cluster elects a new leader; a
        watch from its revision + 1 on the same member delivers every later
        change, so a view built from it is complete.
        """
        request: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            request["range_end"] = b64(range_end)
        if keys_only:
            request["keys_only"] = True
        if serializable:
            request["serializable"] = True
        response = self.call("/kv/range", request, timeout)
        return RangeResult(
            revision=int(response["header"]["revision"]),
            kvs=[key_value(raw) for raw in response.get("kvs", ())],
        )

    def read_many(self, *ranges: tuple[str, str | None]) -> list[RangeResult]:
        """Several ``(key, range_end)`` reads in one round trip (a transaction of ranges,
        at one revision): start-up over a slow link pays per round trip."""
        if not ranges:
            return []  # an empty transaction is a write on etcd 3.4 (the revision moves)
        ops = []
        for key, range_end in ranges:
            request = {"key": b64(key)}
            if range_end is not None:
                request["range_end"] = b64(range_end)
            ops.append({"request_range": request})
        response = self.call("/kv/txn", {"success": ops})
        revision = int(response["header"]["revision"])
        return [
            RangeResult(revision, [key_value(raw) for raw in part["response_range"].get("kvs", ())])
            for part in response.get("responses", ())
        ]

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

    def lease_revoke(self, lease_id: int, timeout: float | None = None) -> None:
        self.call("/lease/revoke", {"ID": str(lease_id)}, timeout)

    def lease_ttl(self, lease_id: int) -> int:
        """Remaining seconds of a lease, -1 when it has expired or never existed."""
        return int(self.call("/lease/timetolive", {"ID": str(lease_id)}).get("TTL", -1))

    # -- watch ------------------------------------------------------------------

    def open_watch(
        self, key: str, range_end: str | None, start_revision: int, idle_timeout: float = 60.0
    ) -> tuple[JsonStream, int]:
        """The messages of a watch request, and :attr:`resets` when it was made.

        :class:`~.watch.WatchStream` reads them (see :func:`.watch.open_stream`).
        A stream silent for ``idle_timeout`` seconds raises on its next read.
        """
        create: dict[str, Any] = {"key": b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            create["range_end"] = b64(range_end)
        resets = self.resets
        request = {"create_request": create}
        client = self._client
        try:
            return client.stream("/watch", request, idle_timeout), resets
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            self._replace_connection(client, exc)
        return self._client.stream("/watch", request, idle_timeout), resets
