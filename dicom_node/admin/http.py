"""Admin HTTP: ``/healthz`` (JSON) and Prometheus ``/metrics``.

On loopback by default; the connection handling, deadlines, TLS and client authentication
are ``web``'s (``admin_tls``, ``admin_auth``, ``http_*``).  ``/healthz`` answers without
authentication (load balancers), every other path needs it when ``admin_auth`` is set.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dicom_node.admin.metrics import Metrics
from dicom_node.web import GuardedHandler, GuardedHTTPServer, PortPolicy

log = logging.getLogger(__name__)

# A single read or write of an admin client that stalls this long fails (the request head
# itself has ``http_header_timeout_seconds``, before any thread serves it).
IDLE_TIMEOUT_SECONDS = 10.0


class AdminServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: Callable[[], dict[str, Any]],
        policy: PortPolicy | None = None,
    ) -> None:
        self._metrics = metrics
        self._health = health
        handler = self._handler_class()
        self._server = GuardedHTTPServer((host, port), handler, policy or PortPolicy("admin HTTP"))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="admin-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("admin HTTP on %s (%s)", self._server.url, self._server.policy.access.describe())

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[GuardedHandler]:
        admin = self

        class Handler(GuardedHandler):
            timeout = IDLE_TIMEOUT_SECONDS  # socket timeout for reading the request

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(admin._metrics.registry))
                elif path == "/healthz":
                    try:
                        body = admin._health()
                    except Exception as exc:  # the health check itself must not crash
                        body = {"status": "error", "error": type(exc).__name__}
                    code = 200 if body.get("status") == "ok" else 503
                    self._reply(code, "application/json", json.dumps(body).encode())
                else:
                    self._reply(404, "text/plain", b"not found\n")

            def do_POST(self) -> None:  # read-only: every other method is 405 with Allow
                self.close_connection = True  # its body, if any, is not read
                self._reply(405, "text/plain", b"method not allowed: GET only\n", {"Allow": "GET"})

            do_PUT = do_DELETE = do_PATCH = do_POST

            def _reply(
                self,
                code: int,
                content_type: str,
                body: bytes,
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("admin http: " + format, *args)

        return Handler
