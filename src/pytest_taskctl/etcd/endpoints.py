"""HTTP clients for etcd members that never look at proxy variables and never probe on their own.

etcd3-py's ``Client()`` asks ``/version`` in its constructor with plain
``requests`` (so ``HTTP_PROXY``/``ALL_PROXY`` apply) and a 0.3 s timeout;
behind a company proxy or with a round trip over 0.3 s the client comes out
unusable, while etcdctl works. Here we ask ``/version`` ourselves, with
``trust_env = False`` and our own timeouts, and hand the answer to a client
subclass whose version "probe" only parses what it was given. Every session
we make also ignores the environment, so ``REQUESTS_CA_BUNDLE`` cannot
replace the CA file either.
"""

from __future__ import annotations

import sys
import types
import warnings
from typing import Any

from .settings import Endpoint, EtcdSettings

#: Connections in one session's pool: watches hold one each while they stream.
POOL_SIZE = 30


class NotEtcd(ConnectionError):
    """Something answered ``/version``, but not an etcd server."""


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
            # etcd3-py warns (DeprecationWarning) on import; users may run with -W error.
            warnings.simplefilter("ignore")
            import etcd3
    finally:
        if stand_in is not None and sys.modules.get("etcd3.aio_client") is stand_in:
            del sys.modules["etcd3.aio_client"]
    return etcd3


def import_requests() -> Any:
    """``requests``, imported without leaving its warnings filters in the suite's process.

    ``requests`` and ``urllib3`` add process-wide warnings filters when first
    imported; a suite that never imports them itself must see the filters
    it set, not ours.
    """
    if "requests" in sys.modules:
        return sys.modules["requests"]
    with warnings.catch_warnings():
        import requests
    return requests


def timeouts(settings: EtcdSettings, read: float | None = None) -> tuple[float, float]:
    """``(connect, read)`` for ``requests``: a slow member is waited for, a dead one is not."""
    return (settings.connect_timeout, read or settings.timeout)


def new_session(settings: EtcdSettings, endpoint: Endpoint) -> Any:
    """A ``requests`` session that ignores proxy and CA variables, with our TLS files."""
    requests = import_requests()
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    session.trust_env = False
    session.verify = settings.cacert or (endpoint.scheme == "https")
    if settings.cert:
        session.cert = (settings.cert, settings.key or "")
    adapter = HTTPAdapter(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def probe_version(endpoint: Endpoint, settings: EtcdSettings) -> dict[str, str]:
    """``GET /version`` on a fresh connection: ``{"etcdserver": ..., "etcdcluster": ...}``."""
    with new_session(settings, endpoint) as session:
        response = session.get(f"{endpoint}/version", timeout=timeouts(settings))
        response.raise_for_status()
        version = response.json()
    if not isinstance(version, dict) or "etcdserver" not in version:
        raise NotEtcd("not an etcd server")
    server = str(version["etcdserver"])
    # etcd answers "not_decided" for the cluster version until a leader is elected.
    cluster = str(version.get("etcdcluster") or server)
    return {"etcdserver": server, "etcdcluster": cluster if cluster[:1].isdigit() else server}


_client_class: type | None = None


def _probed_client_class() -> type:
    """etcd3-py's ``Client`` with the constructor's network probe replaced by our answer."""
    global _client_class
    if _client_class is None:
        etcd3 = import_etcd3()
        import semantic_version

        class ProbedClient(etcd3.Client):  # type: ignore[misc, name-defined]
            """Takes ``server_version``/``cluster_version`` as given (we asked etcd already)."""

            def _retrieve_version(self) -> None:
                self.server_version_sem = semantic_version.Version(self.server_version)
                self.cluster_version_sem = semantic_version.Version(self.cluster_version)

        _client_class = ProbedClient
    return _client_class


def make_client(endpoint: Endpoint, settings: EtcdSettings, version: dict[str, str]) -> Any:
    """An etcd3-py client for ``endpoint`` that makes no request until it is used."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # version warnings for etcd < 3.3
        client = _probed_client_class()(
            host=endpoint.host,
            port=endpoint.port,
            protocol=endpoint.scheme,
            cert=(settings.cert, settings.key) if settings.cert else (),
            verify=settings.cacert or (endpoint.scheme == "https"),
            timeout=timeouts(settings),
            username=settings.user,
            password=settings.password,
            server_version=version["etcdserver"],
            cluster_version=version["etcdcluster"],
        )
    replace_session(client, settings, endpoint)
    return client


def replace_session(client: Any, settings: EtcdSettings, endpoint: Endpoint) -> None:
    """Give ``client`` a new connection pool; the old one's idle connections are closed.

    A pooled keep-alive connection can go silent (a NAT or proxy dropped it
    without a reset); requests would reuse it and wait for the read timeout
    again and again. Streams still reading from the old pool keep their
    connection until they are closed.
    """
    old = getattr(client, "_session", None)
    client._session = new_session(settings, endpoint)
    if old is not None:
        old.close()


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the member (or the way to it) failed, not the request."""
    requests = import_requests()

    if isinstance(exc, requests.RequestException):
        return not isinstance(exc, requests.HTTPError)
    if isinstance(exc, OSError):
        return True
    text = str(exc).lower()
    # A member cut off from its cluster answers, but cannot serve.
    return "no leader" in text or "unavailable" in text or "timed out" in text


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    if "SSL" in text or "certificate" in text.lower():
        return f"TLS error: {text[:200]}"
    return text[:200]
