"""``Date`` on every answer and, on request, ``Retry-After`` as an HTTP date: both on the sandbox clock.

A server's ``Date`` and a ``Retry-After`` date come from one clock, so a client can measure the
wait as their difference whatever its own clock says. uvicorn's ``Date`` (the host's wall clock)
is turned off in :mod:`~airflow_provider_servicetitan.sandbox.server`: it would disagree with the
sandbox clock once a test moves it, and a second ``Date`` header would make both unreadable.
"""

from __future__ import annotations

import math
from email.utils import formatdate

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airflow_provider_servicetitan.sandbox.state import SandboxState


def http_date(seconds: float) -> str:
    """An IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``) of seconds since the epoch."""
    return formatdate(seconds, usegmt=True)


class DateHeaders:
    """Sets ``Date`` from the sandbox clock on every answer; rewrites ``Retry-After`` as a date when asked."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._headers(message.get("headers", []))}
            await send(message)

        await self._app(scope, receive, dated)

    def _headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        # Whole seconds, so "Retry-After date - Date" is exactly the delay the sandbox meant.
        now = math.floor(self._state.clock.now())
        as_date = self._state.faults.config.retry_after_format == "http-date"
        dated = [(b"date", http_date(now).encode())]
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"date":
                continue
            if lowered == b"retry-after" and as_date:
                value = http_date(now + int(value)).encode()
            dated.append((name, value))
        return dated
