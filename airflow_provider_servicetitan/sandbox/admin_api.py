"""Control and truth endpoints under ``/_sandbox/``: not part of the ServiceTitan API, no auth."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from airflow_provider_servicetitan.sandbox.middleware import ADMIN_PREFIX
from airflow_provider_servicetitan.sandbox.problems import ProblemError
from airflow_provider_servicetitan.sandbox.state import SandboxState
from airflow_provider_servicetitan.sandbox.store import Action, MutationError, ResourceTable
from airflow_provider_servicetitan.sandbox.timestamps import format_ms


class MutateRequest(BaseModel):
    """Body of ``POST /_sandbox/mutate``: ``ids`` or ``count`` (``create`` takes ``count``, default 1)."""

    tenant: int
    resource: str
    action: Action
    ids: list[int] | None = None
    count: int | None = Field(default=None, ge=1)


class ClockAdvance(BaseModel):
    """Body of ``POST /_sandbox/clock/advance``."""

    seconds: float = Field(ge=0)


class HeldWait(BaseModel):
    """Body of ``POST /_sandbox/held/wait``: wait until exactly ``count`` requests are held."""

    count: int = Field(default=1, ge=0)
    timeout: float = Field(default=60.0, gt=0, le=600)


def admin_router(state: SandboxState) -> APIRouter:
    """Routes that inspect and steer ``state``."""
    router = APIRouter(prefix=ADMIN_PREFIX.rstrip("/"))

    def clock() -> dict[str, Any]:
        return {"now": format_ms(state.clock.now_ms()), "offset": state.clock.offset}

    def table(tenant: int, resource: str) -> ResourceTable:
        try:
            return state.store.table(tenant, resource)
        except KeyError:
            raise ProblemError(404, detail=f"No resource {resource!r} for tenant {tenant}.") from None

    @router.get("/config")
    async def config() -> dict[str, Any]:
        return {
            **state.config.to_dict(),
            "app_key": state.app_key,
            "credentials": [
                {"tenant_id": c.tenant_id, "client_id": c.client_id, "client_secret": c.client_secret}
                for c in state.credentials
            ],
            "clock": clock(),
        }

    @router.get("/stats")
    async def stats() -> dict[str, Any]:
        return state.stats.snapshot()

    def faults() -> dict[str, Any]:
        return {**state.faults.describe(state.clock.now()), "held_requests": state.held.count}

    @router.get("/faults")
    async def get_faults() -> dict[str, Any]:
        return faults()

    @router.post("/faults")
    async def set_faults(payload: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:  # noqa: B008
        knobs = dict(payload)
        profile = knobs.pop("profile", None)
        try:
            state.set_faults(profile, knobs)
        except ValueError as exc:
            raise ProblemError(400, "Invalid faults", detail=str(exc)) from None
        return faults()

    @router.post("/held/wait")
    async def wait_held(request: HeldWait) -> dict[str, Any]:
        if not await state.held.wait_until(request.count, request.timeout):
            detail = f"{state.held.count} request(s) held after {request.timeout:g}s, not {request.count}."
            raise ProblemError(408, "Held requests not reached", detail=detail)
        return {"held_requests": state.held.count}

    @router.post("/tokens/revoke")
    async def revoke_tokens() -> dict[str, Any]:
        return {"revoked": state.tokens.revoke_all()}

    @router.post("/credentials/{tenant}/rotate")
    async def rotate_secret(tenant: int, revoke_tokens: Annotated[bool, Body(embed=True)] = False) -> dict[str, Any]:
        """A new client secret for the tenant's client id (JSON ``{"revoke_tokens": true}`` revokes
        its tokens too; without it they stay valid until they expire)."""
        try:
            credential, revoked = state.rotate_secret(tenant, revoke_tokens=revoke_tokens)
        except KeyError:
            raise ProblemError(404, detail=f"No tenant {tenant}.") from None
        return {
            "tenant_id": credential.tenant_id,
            "client_id": credential.client_id,
            "client_secret": credential.client_secret,
            "revoked_tokens": revoked,
        }

    @router.post("/reset")
    async def reset() -> dict[str, Any]:
        state.reset()
        return {"reset": True, "clock": clock()}

    @router.post("/mutate")
    async def mutate(request: MutateRequest) -> dict[str, Any]:
        table(request.tenant, request.resource)
        try:
            changed = state.store.mutate(
                request.tenant,
                request.resource,
                request.action,
                ids=request.ids,
                count=request.count,
                now_ms=state.clock.now_ms(),
            )
        except MutationError as exc:
            raise ProblemError(400, "Invalid mutation", detail=str(exc)) from None
        return {
            "tenant": request.tenant,
            "resource": request.resource,
            "action": request.action,
            "changed": [record.truth() for record in changed],
        }

    @router.get("/truth/{tenant}/{resource}")
    async def truth(tenant: int, resource: str) -> list[dict[str, Any]]:
        return [record.truth() for record in table(tenant, resource).records()]

    @router.post("/clock/advance")
    async def advance_clock(request: ClockAdvance) -> dict[str, Any]:
        state.clock.advance(request.seconds)
        return clock()

    return router
