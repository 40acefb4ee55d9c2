"""Serve OHIF's prebuilt ``dist/`` and proxy ``/dicom-web`` and ``/wado`` to Orthanc.

Usage: python serve.py DIST ORTHANC_URL PORT APP_CONFIG_JS
A development and test aid for checking how OHIF shows the node's results; not for
production.  Binds 127.0.0.1 only and exits when the process that started it is gone.
"""

from __future__ import annotations

import http.server
import os
import socketserver
import sys
import threading
import time
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
            with urllib.request.urlopen(request, timeout=120) as response:
                self._send(response.status, response.headers["Content-Type"], response.read())
        except urllib.error.HTTPError as exc:
            self._send(exc.code, "text/plain", b"")
        except (urllib.error.URLError, TimeoutError):
            self._send(502, "text/plain", b"Orthanc is not answering")  # down or stopped

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def exit_with_parent(server: Server) -> None:
    # A test or demo killed without cleanup must not leave the server behind.
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    server.shutdown()


server = Server(("127.0.0.1", PORT), Handler)
threading.Thread(target=exit_with_parent, args=(server,), daemon=True).start()
server.serve_forever()
