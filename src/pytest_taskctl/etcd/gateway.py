"""Raw calls to etcd's gRPC-JSON gateway, with etcd3-py as the transport only.

etcd3-py's model layer costs several milliseconds of CPU per call (its
swagger layer inspects signatures on every request), and its ``Watcher``
dies silently when etcd restarts. So we keep its session, TLS, auth token and
API-prefix detection, and speak the gateway's JSON directly
(``call_rpc(..., raw=True)``, about 1.2 ms a call). This module also holds
the small builders for transaction operations and compare clauses, so every
caller writes them the same way.
"""

from __future__ import annotations

import base64
import logging
import sys
import threading
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .settings import Endpoint, EtcdSettings

if TYPE_CHECKING:
    from .watch import WatchStream

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
        request: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            request["range_end"] = b64(range_end)
        if keys_only:
            request["keys_only"] = True
        response = self.call("/kv/range", request)
        return RangeResult(
            revision=int(response["header"]["revision"]),
            kvs=[key_value(raw) for raw in response.get("kvs", ())],
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

    def lease_revoke(self, lease_id: int, timeout: float | None = None) -> None:
        self.call("/lease/revoke", {"ID": str(lease_id)}, timeout)

    def lease_ttl(self, lease_id: int) -> int:
        """Remaining seconds of a lease, -1 when it has expired or never existed."""
        return int(self.call("/lease/timetolive", {"ID": str(lease_id)}).get("TTL", -1))

    # -- watch ------------------------------------------------------------------

    def watch(
        self, key: str, range_end: str | None, start_revision: int, idle_timeout: float = 60.0
    ) -> WatchStream:
        create: dict[str, Any] = {"key": b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            create["range_end"] = b64(range_end)
        from .watch import WatchStream  # watch.py builds on this module

        response = self._client.call_rpc(
            "/watch",
            {"create_request": create},
            stream=True,
            encode=False,
            raw=True,
            timeout=(self.settings.timeout, idle_timeout),
        )
        return WatchStream(response)


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
