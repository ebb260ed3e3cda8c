"""The ServiceTitan API itself: token endpoint, tenant list endpoints, export feeds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from airflow_provider_servicetitan.catalog import RESOURCES, Resource
from airflow_provider_servicetitan.sandbox.auth import authorize, issue_token
from airflow_provider_servicetitan.sandbox.cursor import encode_position
from airflow_provider_servicetitan.sandbox.data import Record
from airflow_provider_servicetitan.sandbox.faults import FaultKind
from airflow_provider_servicetitan.sandbox.problems import ProblemError
from airflow_provider_servicetitan.sandbox.query import parse_export_query, parse_list_query
from airflow_provider_servicetitan.sandbox.state import SandboxState

TOKEN_PATH = "/connect/token"  # noqa: S105 - a path


def _resolve(module: str, tenant: str, name: str, *, export: bool) -> tuple[int, Resource]:
    """The tenant id and resource of a path; 404 unless the resource exists in that module."""
    resource = RESOURCES.get(name)
    if resource is None or resource.module != module or not tenant.isdigit() or (export and not resource.exportable):
        raise ProblemError(404, detail="No such endpoint.")
    return int(tenant), resource


def api_router(state: SandboxState) -> APIRouter:
    """Routes of the faithful API, reading and changing ``state``."""
    router = APIRouter()

    def guard(request: Request, tenant_id: int, resource: Resource) -> None:
        headers = request.headers
        authorize(state, headers.get("authorization"), headers.get("st-app-key"), tenant_id, resource.module)

    def serve(records: list[Record], tenant_id: int, resource: Resource, *, export: bool) -> list[dict[str, Any]]:
        served = []
        for record in records:
            payload = record.to_api(export=export)
            broken = state.faults.malform(tenant_id, resource.name, payload)
            if broken is not None:
                state.stats.fault(FaultKind.MALFORMED_RECORD)
            served.append(payload if broken is None else broken)
        return served

    @router.post(TOKEN_PATH)
    async def token(request: Request) -> JSONResponse:
        form = await request.form()
        return JSONResponse(issue_token(state, {key: str(value) for key, value in form.items()}))

    @router.get("/{module}/v2/tenant/{tenant}/export/{name}")
    async def export_feed(module: str, tenant: str, name: str, request: Request) -> JSONResponse:
        tenant_id, resource = _resolve(module, tenant, name, export=True)
        guard(request, tenant_id, resource)
        query = parse_export_query(request.query_params)
        config = state.config
        visible_until = None
        if not query.include_recent_changes:
            visible_until = state.clock.now_ms() - int(config.recent_changes_delay * 1000)
        table = state.store.table(tenant_id, resource.name)
        page = table.export_page(query.after, config.export_page_size, visible_until)
        return JSONResponse(
            {
                "hasMore": page.has_more,
                "continueFrom": encode_position(page.last),
                "data": serve(page.records, tenant_id, resource, export=True),
            }
        )

    @router.get("/{module}/v2/tenant/{tenant}/{name}")
    async def list_records(module: str, tenant: str, name: str, request: Request) -> JSONResponse:
        tenant_id, resource = _resolve(module, tenant, name, export=False)
        guard(request, tenant_id, resource)
        query = parse_list_query(request.query_params, state.config.max_page_size)
        records, has_more, total = query.select(state.store.table(tenant_id, resource.name).records())
        return JSONResponse(
            {
                "page": query.page,
                "pageSize": query.page_size,
                "hasMore": has_more,
                "totalCount": total if query.include_total else None,
                "data": serve(records, tenant_id, resource, export=False),
            }
        )

    return router
