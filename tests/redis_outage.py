"""Test helpers for Redis outages: a TCP proxy that can be switched off, clients built the way callers
build them. The fixtures ``proxy`` and
``caller_client`` (tests/conftest.py) are built on them."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class SwitchableProxy:
    """A TCP proxy to Redis. Switched off, it accepts each connection and closes it at once (and
    drops the open ones), so every command through it fails fast. ``connections`` counts accepts."""

    @classmethod
    def to_redis(cls, redis_url: str) -> SwitchableProxy:
        parsed = urlparse(redis_url)
        return cls((parsed.hostname or "127.0.0.1", parsed.port or 6379))

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.connections = 0
        self._up = True
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                if not self._up:
                    _close(conn)
                    continue
                upstream = socket.create_connection(self._target)
                self._open.update((conn, upstream))
            threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)

    def switch(self, *, up: bool) -> None:
        with self._lock:
            self._up = up
            if up:
                return
            dropped, self._open = self._open, set()
        for sock in dropped:
            _close(sock)

    def close(self) -> None:
        _close(self._server)
        self.switch(up=False)

    def __enter__(self) -> SwitchableProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def redis_db(redis_url: str) -> int:
    """The database number of the test Redis."""
    return int(urlparse(redis_url).path.lstrip("/") or 0)


def fast_failing_client(host: str, port: int, db: int = 0) -> redis.Redis:
    """A client built to fail fast by the caller: short timeouts and no retries."""
    return redis.Redis(
        host=host, port=port, db=db, socket_connect_timeout=0.2, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


def default_client(port: int, redis_url: str) -> redis.Redis:
    """A client as a caller may well build it: redis-py's defaults (5 s timeouts; redis-py 6+
    retries 10 times with exponential backoff), to 127.0.0.1:``port`` and the test database."""
    return redis.Redis(host="127.0.0.1", port=port, db=redis_db(redis_url))
