"""Real receivers for the alert tests: an HTTP webhook and an SMTP server on 127.0.0.1.

Both record what arrives before answering, so what a synchronous ``send`` delivered is there
when it returns: the tests never wait for time to pass.
"""

from __future__ import annotations

import email
import email.message
import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class WebhookReceiver:
    """An HTTP server recording the JSON bodies POSTed to it, answering ``status``."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with receiver._lock:
                    receiver.bodies.append(body)
                    receiver.paths.append(self.path)
                    status = receiver.status
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def texts(self) -> list[str]:
        with self._lock:
            return [body["text"] for body in self.bodies]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class SmtpReceiver:
    """Just enough SMTP (RFC 5321 without extensions) to accept mail from ``smtplib``."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.recipients: list[list[str]] = []
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(f"{line}\r\n".encode())

            def _data_line(self) -> bytes:
                """The next line of a DATA section; ``b""`` at its end (or if the client left)."""
                line = self.rfile.readline()
                return b"" if line == b".\r\n" else line.removeprefix(b".")

            def handle(self) -> None:
                self.reply("220 localhost test SMTP")
                recipients: list[str] = []
                while line := self.rfile.readline():
                    command = line.decode().strip()
                    verb = command.split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250 localhost")
                    elif verb == "MAIL":
                        recipients = []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        recipients.append(command.split(":", 1)[1].strip(" <>"))
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        data = b"".join(iter(self._data_line, b""))
                        with receiver._lock:
                            receiver.messages.append(email.message_from_bytes(data))
                            receiver.recipients.append(recipients)
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 OK")

        self._lock = threading.Lock()
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> SmtpReceiver:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
