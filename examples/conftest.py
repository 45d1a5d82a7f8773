"""A tiny "API under test" for the demo: it logs the X-Trace-Id each request carries."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

api_log = logging.getLogger("orders_api")


class OrdersAPI(BaseHTTPRequestHandler):
    orders: dict[str, dict[str, object]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        api_log.info("GET %s (X-Trace-Id=%s)", self.path, self.headers.get("X-Trace-Id"))
        order = self.orders.get(self.path.rsplit("/", 1)[-1])
        self._reply(200 if order else 404, order or {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        order_id = str(len(self.orders) + 1)
        self.orders[order_id] = {"id": order_id, **body}
        api_log.info("POST %s (X-Trace-Id=%s)", self.path, self.headers.get("X-Trace-Id"))
        self._reply(201, self.orders[order_id])

    def _reply(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OrdersAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
