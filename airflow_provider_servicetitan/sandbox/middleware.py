"""The ASGI layer that injects faults around the faithful API and counts what was served.

It sits under the ``Date`` layer only, so it can delay, hold, replace or spoil an answer and
reach the connection itself. ``/_sandbox/`` requests pass through untouched and uncounted.
"""

from __future__ import annotations

import asyncio
import re
from http import HTTPStatus
from typing import NamedTuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airflow_provider_servicetitan.sandbox.api import TOKEN_PATH
from airflow_provider_servicetitan.sandbox.faults import NO_FAULT, FaultInjector, FaultKind, FaultPlan
from airflow_provider_servicetitan.sandbox.problems import ProblemError
from airflow_provider_servicetitan.sandbox.state import SandboxState
from airflow_provider_servicetitan.sandbox.stats import Stats
from airflow_provider_servicetitan.sandbox.transport import KeptRequest, close_connection, hold, reset_connection

ADMIN_PREFIX = "/_sandbox/"
_TENANT_PATH = re.compile(r"/[^/]+/v2/tenant/(?P<tenant>\d+)/(?P<export>export/)?(?P<resource>[^/]+)")
_TITLES = {
    FaultKind.OUTAGE: "Service Unavailable",
    FaultKind.MAINTENANCE: "Service is suspended for maintenance",
}
_BROKEN_TAIL = b"\n<!-- upstream connection closed -->"


class Target(NamedTuple):
    """What a request is for, as the stats and the fault layer see it."""

    endpoint: str
    resource: str | None = None
    tenant_id: int | None = None


def classify(path: str) -> Target:
    """``token``, ``list``/``export`` of a resource of a tenant, or ``other``."""
    if path == TOKEN_PATH:
        return Target("token")
    match = _TENANT_PATH.fullmatch(path)
    if match is None:
        return Target("other")
    return Target("export" if match["export"] else "list", match["resource"], int(match["tenant"]))


def _counting(send: Send, stats: Stats) -> Send:
    async def counted(message: Message) -> None:
        if message["type"] == "http.response.start":
            stats.response(message["status"])
        await send(message)

    return counted


def _counting_pages(send: Send, faults: FaultInjector, tenant_id: int) -> Send:
    """Counts an export answer of 200 as a page served to ``tenant_id`` (``hold_after_pages``)."""

    async def counted(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == HTTPStatus.OK:
            faults.export_page_served(tenant_id)
        await send(message)

    return counted


class _BodyFault:
    """Buffers a successful answer, then sends it as broken JSON or cut short."""

    def __init__(self, kind: FaultKind, receive: Receive, send: Send, stats: Stats) -> None:
        self._kind = kind
        self._receive = receive
        self._send = send
        self._stats = stats
        self._start: Message = {}
        self._body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            return
        self._body += message.get("body", b"")
        if message.get("more_body", False):
            return
        if self._start["status"] != HTTPStatus.OK:
            await self._send(self._start)
            await self._send({"type": "http.response.body", "body": bytes(self._body)})
            return
        self._stats.fault(self._kind)
        if self._kind is FaultKind.BROKEN_JSON:
            await self._send_broken()
        else:
            await self._send_truncated()

    async def _send_broken(self) -> None:
        body = bytes(self._body[: len(self._body) // 2]) + _BROKEN_TAIL
        headers = [(name, value) for name, value in self._start["headers"] if name.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    async def _send_truncated(self) -> None:
        await self._send(self._start)
        half = bytes(self._body[: len(self._body) // 2])
        await self._send({"type": "http.response.body", "body": half, "more_body": True})
        await close_connection(self._receive)


class FaultMiddleware:
    """Applies the fault plan of each API request, and counts every non-admin request."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self._app(scope, receive, send)
            return
        state = self._state
        target = classify(scope["path"])
        stats = state.stats
        stats.request(*target)
        tenant_id = target.tenant_id
        if tenant_id is None:
            await self._serve(NO_FAULT, scope, receive, _counting(send, stats), stats)
            return
        if state.faults.holds(tenant_id):
            let_go = await self._hold(tenant_id, receive)
            if let_go is None:
                return
            receive = let_go
        # Drawn only now: a held request draws when it is let go, one that never is draws nothing.
        plan = state.faults.plan(tenant_id, state.clock.now())
        if target.endpoint == "export" and plan.action is None and plan.body_fault is None:
            send = _counting_pages(send, state.faults, tenant_id)
        await self._serve(plan, scope, receive, _counting(send, stats), stats)

    async def _hold(self, tenant_id: int, receive: Receive) -> Receive | None:
        """Hold a request of ``tenant_id`` while ``hold_after_pages`` says so.

        :returns: the ``receive`` to serve it with once let go, or ``None`` when the client left or
            the server is stopping (the connection is then closed).
        """
        state = self._state
        kept = KeptRequest(receive)
        if await state.held.hold(lambda: state.faults.holds(tenant_id), kept.until_disconnect(), state.stopping):
            return kept.receive
        await close_connection(kept.receive)
        return None

    async def _serve(self, plan: FaultPlan, scope: Scope, receive: Receive, send: Send, stats: Stats) -> None:
        if plan.delay > 0:
            stats.fault(FaultKind.LATENCY)
            await asyncio.sleep(plan.delay)
        if plan.action is not None:
            stats.fault(plan.action)
        if plan.action is FaultKind.RESET:
            await reset_connection(receive)
        elif plan.action is FaultKind.TIMEOUT:
            with self._state.held.counted():
                ended_early = await hold(receive, self._state.faults.config.timeout_hold, self._state.stopping)
            if ended_early:
                await close_connection(receive)
            else:
                await ProblemError(504).response()(scope, receive, send)
        elif plan.action is not None:
            problem = ProblemError(plan.status, _TITLES.get(plan.action), retry_after=plan.retry_after)
            await problem.response()(scope, receive, send)
        elif plan.body_fault is not None:
            await self._app(scope, receive, _BodyFault(plan.body_fault, receive, send, stats).send)
        else:
            await self._app(scope, receive, send)
