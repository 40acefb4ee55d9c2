"""Serve OHIF's prebuilt ``dist/`` and proxy ``/dicom-web`` and ``/wado`` to Orthanc.

Usage: python serve.py DIST ORTHANC_URL PORT APP_CONFIG_JS
A development aid for checking how OHIF shows the node's results; not for production.
"""

from __future__ import annotations

import http.server
import socketserver
import sys
import urllib.error
import urllib.request
from pathlib import Path

DIST, ORTHANC, PORT, CONFIG = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, directory=str(DIST), **kwargs)  # type: ignore[arg-type]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith(("/dicom-web", "/wado")):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, "application/javascript", CONFIG.read_bytes())
        else:
            if path == "/" or not (DIST / path.lstrip("/")).exists():
                self.path = "/index.html"  # single-page app routes
            super().do_GET()

    def _proxy(self) -> None:
        accept = {"Accept": self.headers["Accept"]} if self.headers["Accept"] else {}
        request = urllib.request.Request(ORTHANC + self.path, headers=accept)
        try:
            with urllib.request.urlopen(request) as response:
                self._send(response.status, response.headers["Content-Type"], response.read())
        except urllib.error.HTTPError as exc:
            self._send(exc.code, "text/plain", b"")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


Server(("127.0.0.1", PORT), Handler).serve_forever()
