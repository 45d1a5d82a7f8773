"""How an etcd member is reached: plain ``http.client`` connections, our TLS, our version probe.

We speak etcd's gRPC-JSON gateway with the standard library only. A client
library on ``requests`` (etcd3-py) cost ~130 modules, 60-80 ms of start-up
and about a millisecond of CPU per call, and it let the environment in:
``HTTP_PROXY``/``ALL_PROXY`` applied to its own ``/version`` probe (with a
0.3 s timeout), and ``REQUESTS_CA_BUNDLE`` replaced the CA file. Here
nothing reads the environment: ``http.client`` has no proxy support at all,
and the TLS context trusts exactly the ``--taskctl-etcd-cacert`` file (or,
without one, OpenSSL's built-in default store, not ``SSL_CERT_FILE``).

Errors come in two kinds, and :func:`is_connection_failure` tells them
apart: :class:`EtcdError` -- etcd answered and refused (a wrong password,
a failed compare, no leader); an :class:`OSError` -- the way to the member
broke (refused, reset, timed out, a TLS failure, a broken HTTP exchange,
re-raised as :class:`TransportError`).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import ssl
from typing import Any

from .settings import Endpoint, EtcdSettings


class EtcdError(Exception):
    """etcd (or what stands in front of it) answered the request with an error.

    ``str()`` is etcd's own message (``etcdserver: ...``), which callers match
    on, as etcdctl users know them.
    """

    def __init__(self, message: str, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        #: The gRPC status code etcd gave (14: unavailable), when it gave one.
        self.code = code
        #: The HTTP status of the answer.
        self.status = status


class TransportError(ConnectionError):
    """The HTTP exchange with a member broke (a reset mid-answer, a malformed answer).

    An :class:`OSError`, like every other way a member can fail us, so one
    ``except OSError`` (the CLI's "etcd went away") covers them all.
    """


class NotEtcd(ConnectionError):
    """Something answered ``/version``, but not an etcd server."""


def tls_context(settings: EtcdSettings) -> ssl.SSLContext:
    """The context for ``https`` members: verified against our CA only, with our client cert.

    ``ssl.create_default_context()`` would read ``SSL_CERT_FILE``/``SSL_CERT_DIR``;
    a machine-wide CA bundle must not decide whom we trust, so without a CA
    file we load OpenSSL's compiled-in default locations ourselves.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    if settings.cacert:
        context.load_verify_locations(cafile=settings.cacert)
    else:
        paths = ssl.get_default_verify_paths()
        cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
        capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
        if cafile or capath:
            context.load_verify_locations(cafile=cafile, capath=capath)
    if settings.cert:
        context.load_cert_chain(settings.cert, settings.key or None)
    return context


def open_connection(
    endpoint: Endpoint, settings: EtcdSettings, context: ssl.SSLContext | None
) -> http.client.HTTPConnection:
    """A connected keep-alive connection; TCP connect and TLS handshake within ``connect_timeout``.

    A dead member is left after ``connect_timeout``; each request then sets
    its own read timeout on the socket, so a slow member is waited for longer.
    """
    connection: http.client.HTTPConnection
    if endpoint.scheme == "https":
        connection = http.client.HTTPSConnection(
            endpoint.host, endpoint.port, timeout=settings.connect_timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(
            endpoint.host, endpoint.port, timeout=settings.connect_timeout
        )
    try:
        connection.connect()
    except BaseException:
        connection.close()  # a failed TLS handshake leaves the TCP socket open
        raise
    return connection


def is_dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle keep-alive connection was closed by the other side meanwhile.

    An idle connection has nothing to read; if it is readable, the member
    closed it (EOF) or sent something unasked. Reusing it would fail the next
    request and count as a failed member, so it is dropped before use (what
    urllib3 does for its pools).
    """
    sock = connection.sock
    if sock is None:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def exchange(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    timeout: float,
) -> http.client.HTTPResponse:
    """Send one request and read the answer's head; the body is the caller's to read.

    ``http.client``'s own protocol errors are not :class:`OSError`; they are
    re-raised as :class:`TransportError`, a failed member like any other.
    """
    try:
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        connection.request(method, path, body, headers)
        return connection.getresponse()
    except http.client.HTTPException as exc:
        raise TransportError(f"{type(exc).__name__}: {exc}") from exc


def read_body(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read()
    except http.client.HTTPException as exc:
        raise TransportError(f"{type(exc).__name__}: {exc}") from exc


def decode(status: int, reason: str, payload: bytes) -> Any:
    """The JSON of an answer; :class:`EtcdError` for an error status or an answer not in JSON."""
    try:
        answer = json.loads(payload) if payload else {}
    except ValueError:
        text = payload[:200].decode("utf-8", "replace").strip()
        if status >= 400:
            raise EtcdError(f"HTTP {status} {reason}: {text}", status=status) from None
        raise EtcdError(f"not a JSON answer: {text!r}", status=status) from None
    if status < 400:
        return answer
    if not isinstance(answer, dict):
        raise EtcdError(f"HTTP {status} {reason}: {answer}", status=status)
    # grpc-gateway v1 (etcd 3.4, 3.5): {"error": ..., "code": N, "message": ...}; v2: no "error".
    message = answer.get("message") or answer.get("error") or f"HTTP {status} {reason}"
    code = answer.get("code")
    raise EtcdError(str(message), code if isinstance(code, int) else None, status)


def probe_version(connection: http.client.HTTPConnection, settings: EtcdSettings) -> dict[str, str]:
    """``GET /version``: ``{"etcdserver": ..., "etcdcluster": ...}``; the connection stays open."""
    response = exchange(connection, "GET", "/version", None, {}, settings.timeout)
    payload = read_body(response)
    if response.will_close:
        connection.close()
    try:
        version = decode(response.status, response.reason, payload)
    except EtcdError as exc:
        raise NotEtcd(f"not an etcd server ({exc})") from None
    if not isinstance(version, dict) or "etcdserver" not in version:
        raise NotEtcd("not an etcd server")
    server = str(version["etcdserver"])
    if not server[:1].isdigit() or int(server.split(".")[0]) < 3:
        raise NotEtcd(f"etcd {server} has no v3 API")
    # etcd answers "not_decided" for the cluster version until a leader is elected.
    cluster = str(version.get("etcdcluster") or server)
    return {"etcdserver": server, "etcdcluster": cluster if cluster[:1].isdigit() else server}


def api_prefix(server_version: str) -> str:
    """The gateway's path prefix: ``/v3`` from etcd 3.4, ``/v3beta`` in 3.3, ``/v3alpha`` before."""
    try:
        major, minor = (int(part) for part in server_version.split(".")[:2])
    except ValueError:
        return "/v3"
    if (major, minor) < (3, 3):
        return "/v3alpha"
    if (major, minor) < (3, 4):
        return "/v3beta"
    return "/v3"


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the member (or the way to it) failed, not the request."""
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return True
    text = str(exc).lower()
    # A member cut off from its cluster answers, but cannot serve.
    return "no leader" in text or "unavailable" in text or "timed out" in text


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ConnectionRefusedError) or "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, TimeoutError) or "timed out" in text.lower():
        return "timed out"
    if isinstance(exc, ssl.SSLError) or "SSL" in text or "certificate" in text.lower():
        return f"TLS error: {text[:200]}"
    return text[:200]
