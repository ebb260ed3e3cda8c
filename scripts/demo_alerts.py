"""A tiny local Slack-compatible webhook for the demo: it keeps every alert the DAG posts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class AlertReceiver:
    """An HTTP server on 127.0.0.1 (a free port) that answers 200 to every POST and keeps its body.

    Use it as a context manager; :attr:`alerts` holds the text of each alert received.
    """

    def __init__(self) -> None:
        self.alerts: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver._keep(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the demo prints its own summary."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-alerts", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _keep(self, body: bytes) -> None:
        try:
            payload = json.loads(body)
            text = str(payload.get("text") or payload) if isinstance(payload, dict) else str(payload)
        except ValueError:
            text = body.decode("utf-8", errors="replace")
        with self._lock:
            self.alerts.append(text)

    def received(self) -> list[str]:
        """A copy of the alerts received so far."""
        with self._lock:
            return list(self.alerts)

    def start(self) -> AlertReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (a no-op when not started)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> AlertReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
