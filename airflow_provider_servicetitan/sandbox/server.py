"""Run a sandbox on uvicorn in a background thread, on a real port other processes can reach."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType

import uvicorn

from airflow_provider_servicetitan.sandbox.admin import SandboxAdmin
from airflow_provider_servicetitan.sandbox.app import create_app
from airflow_provider_servicetitan.sandbox.config import SandboxConfig
from airflow_provider_servicetitan.sandbox.credentials import SandboxCredential
from airflow_provider_servicetitan.sandbox.state import SandboxState

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 30.0
_GRACEFUL_SHUTDOWN = 2
_POLL = 0.01


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Its protocol must be IPPROTO_TCP (``socket.create_server`` leaves it 0):
    asyncio sets TCP_NODELAY only on such sockets, and without it every keep-alive answer waits ~40 ms
    for a delayed ACK."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


class SandboxServer:
    """A ServiceTitan sandbox listening on ``config.host:config.port`` (port 0: a free one).

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. The state (data,
    credentials) exists from construction; the port is bound by :meth:`start`.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._state = SandboxState(self.config)
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port``: API host and auth host alike."""
        if self._socket is None:
            raise RuntimeError("the sandbox is not started")
        host, port = self._socket.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def token_url(self) -> str:
        return self.base_url + "/connect/token"

    @property
    def credentials(self) -> list[SandboxCredential]:
        """One credential per tenant, with its current client secret (after a rotation, the new one)."""
        return list(self._state.credentials)

    @property
    def admin(self) -> SandboxAdmin:
        """Client of the ``/_sandbox/`` control endpoints."""
        return SandboxAdmin(self.base_url)

    def start(self) -> SandboxServer:
        """Bind the port, serve in a background thread, return once the sandbox answers."""
        if self._thread is not None:
            raise RuntimeError("the sandbox is already started")
        self._socket = _listen(self.config.host, self.config.port)
        uvicorn_config = uvicorn.Config(
            create_app(self._state),
            log_config=None,
            log_level=self.config.log_level,
            access_log=False,
            date_header=False,  # the sandbox sets Date from its own clock (sandbox/dates.py)
            lifespan="off",
            loop="asyncio",
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN,
        )
        server = uvicorn.Server(uvicorn_config)
        self._state.stopping = asyncio.Event()
        thread = threading.Thread(
            target=asyncio.run, args=(self._serve(server, self._socket),), name="servicetitan-sandbox", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sandbox did not start; see the uvicorn log")
            thread.join(_POLL)
        return self

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        await server.serve(sockets=[sock])

    def stop(self) -> None:
        """Stop serving (held requests let go at once) and release the port; a no-op when not started."""
        if self._server is not None and self._thread is not None:
            if self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    self._loop.call_soon_threadsafe(self._state.stopping.set)
            self._server.should_exit = True
            self._thread.join(_STOP_TIMEOUT)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = self._loop = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
