"""One etcd member's gRPC-JSON gateway over keep-alive ``http.client`` connections.

Many threads share one gateway (writer, watches and their liveness checks,
lease keep-alive, the main thread, the join queue), and an
``http.client`` connection serves one request at a time. So every request
takes an idle connection from a small pool (or opens one), uses it alone
and gives it back: a connection is never used by two threads at once, a
thread that is done holds none, and :meth:`MemberClient.reset` can close
every idle one -- a connection left in a ``threading.local`` could not be
closed from another thread and would outlive its thread. A watch takes a
connection for itself and keeps it while it streams (:class:`JsonStream`).
"""

from __future__ import annotations

import codecs
import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from .endpoints import (
    TransportError,
    api_prefix,
    decode,
    exchange,
    is_dropped,
    open_connection,
    probe_version,
    read_body,
)
from .settings import Endpoint, EtcdSettings

#: Idle connections kept per member; more are closed when given back.
POOL_SIZE = 30
#: A watch message larger than this is not a message but a stream out of step.
MAX_MESSAGE = 64 * 1024 * 1024

_JSON = json.JSONDecoder()
_WHITESPACE = " \t\r\n"


class MemberClient:
    """POSTs to one member's gateway; ``token`` is sent as ``Authorization`` when set."""

    def __init__(
        self,
        endpoint: Endpoint,
        settings: EtcdSettings,
        version: Mapping[str, str],
        *,
        context: ssl.SSLContext | None = None,
        idle: tuple[http.client.HTTPConnection, ...] = (),
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        #: ``{"etcdserver": ..., "etcdcluster": ...}`` as the member answered ``/version``.
        self.version = dict(version)
        #: The gateway's path prefix for this etcd version (``/v3``).
        self.prefix = api_prefix(self.version["etcdserver"])
        #: TLS context for ``https`` members, shared by all their connections.
        self.context = context
        self.token: str | None = None
        self._idle = list(idle)
        self._lock = threading.Lock()
        #: Bumped by :meth:`reset`: connections in use then are not pooled again.
        self._generation = 0

    @classmethod
    def probe(
        cls, endpoint: Endpoint, settings: EtcdSettings, context: ssl.SSLContext | None
    ) -> MemberClient:
        """Ask ``/version`` and keep the connection that asked as the first idle one."""
        connection = open_connection(endpoint, settings, context)
        try:
            version = probe_version(connection, settings)
        except BaseException:
            connection.close()
            raise
        idle = (connection,) if connection.sock is not None else ()
        return cls(endpoint, settings, version, context=context, idle=idle)

    # -- connections ------------------------------------------------------------

    def _acquire(self) -> tuple[http.client.HTTPConnection, int]:
        """An idle connection that is still open, or a new one; and the pool's generation."""
        stale = []
        try:
            with self._lock:
                generation = self._generation
                while self._idle:
                    connection = self._idle.pop()
                    if not is_dropped(connection):
                        return connection, generation
                    stale.append(connection)
        finally:
            for connection in stale:
                connection.close()
        return open_connection(self.endpoint, self.settings, self.context), generation

    def _release(
        self,
        connection: http.client.HTTPConnection,
        generation: int,
        response: http.client.HTTPResponse,
    ) -> None:
        with self._lock:
            if (
                not response.will_close
                and generation == self._generation
                and len(self._idle) < POOL_SIZE
            ):
                self._idle.append(connection)
                return
        connection.close()

    def _headers(self, token: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        return headers

    # -- requests ---------------------------------------------------------------

    def post(
        self, method: str, data: Mapping[str, Any], timeout: float, *, auth: bool = True
    ) -> Any:
        """POST ``data`` to ``<prefix><method>`` and decode the answer; ``auth=False``: no token.

        Raises :class:`~.endpoints.EtcdError` when etcd refuses, an :class:`OSError`
        when the member cannot be reached or the exchange breaks.
        """
        body = json.dumps(data, separators=(",", ":")).encode("utf-8")
        headers = self._headers(self.token if auth else None)
        connection, generation = self._acquire()
        try:
            response = exchange(connection, "POST", self.prefix + method, body, headers, timeout)
            payload = read_body(response)
        except BaseException:
            connection.close()
            raise
        self._release(connection, generation, response)
        return decode(response.status, response.reason, payload)

    def stream(self, method: str, data: Mapping[str, Any], idle_timeout: float) -> JsonStream:
        """POST a streaming request; the answer's JSON messages are read from the result.

        The connection is the stream's alone until it is closed. ``idle_timeout``
        is the longest silence a read waits for before it raises.
        """
        body = json.dumps(data, separators=(",", ":")).encode("utf-8")
        connection, _ = self._acquire()
        try:
            response = exchange(
                connection, "POST", self.prefix + method, body, self._headers(self.token),
                idle_timeout,
            )  # fmt: skip
            if response.status >= 400:
                decode(response.status, response.reason, read_body(response))
        except BaseException:
            connection.close()
            raise
        return JsonStream(connection, response)

    def reset(self) -> None:
        """Close the idle connections; those in use are closed when given back.

        For a connection that may have gone silent (a NAT or proxy dropped it
        without a reset): the next request opens a fresh one instead of
        waiting for the read timeout again. Open streams keep their
        connection until they are closed. The client stays usable.
        """
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    close = reset


class JsonStream:
    """The JSON messages of one streaming answer; ``close()``, from any thread, ends them.

    etcd's gateway sends one JSON object per message, newline-delimited in
    3.4/3.5 but not always so in older versions; objects are cut out of the
    byte stream by the JSON decoder itself, whatever separates them.
    A silent connection is noticed by the read timeout (etcd sends nothing
    on an idle watch): the read raises :class:`TimeoutError`.
    """

    def __init__(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> None:
        self._connection = connection
        self._response = response
        self._sock = connection.sock
        self._lock = threading.Lock()
        self._reading = False
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        with self._lock:
            if self.closed:
                return
            self._reading = True
        try:
            yield from self._messages()
        except (OSError, http.client.HTTPException) as exc:
            if self.closed:
                return  # what close() does to a reader: the stream ends
            if isinstance(exc, OSError):
                raise
            # e.g. IncompleteRead: cut off mid-chunk
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            with self._lock:
                self._reading = False
                closed = self.closed
            if closed:
                self._release()  # close() came while we read and left the socket to us

    def _messages(self) -> Iterator[Any]:
        utf8 = codecs.getincrementaldecoder("utf-8")()
        text = ""
        while True:
            data = self._response.read1(65536)
            if not data:
                break
            text += utf8.decode(data)
            position = 0
            while True:
                while position < len(text) and text[position] in _WHITESPACE:
                    position += 1
                if position == len(text):
                    text = ""
                    break
                try:
                    message, position = _JSON.raw_decode(text, position)
                except ValueError:  # incomplete: the rest comes with the next read
                    text = text[position:]
                    if len(text) > MAX_MESSAGE:
                        raise TransportError("stream out of step: no JSON message") from None
                    break
                yield message
        if text.strip():
            raise TransportError("stream ended inside a message")

    def close(self) -> None:
        """Unblock a reader in another thread by shutting the socket down.

        The socket is closed by whoever is last: by us when nobody reads, else
        by the reader when its read returns -- a socket closed under a
        blocked reader could hand its descriptor to another connection.
        """
        with self._lock:
            self.closed = True
            reading = self._reading
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown: a TLS socket's own would also drop
                # its TLS state, under the reader's feet.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        if not reading:
            self._release()

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self._response.close()
        with contextlib.suppress(Exception):
            self._connection.close()
