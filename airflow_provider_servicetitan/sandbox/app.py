"""The sandbox as one ASGI application: API and admin routes behind the fault layer and the ``Date`` layer."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp

from airflow_provider_servicetitan.sandbox.admin_api import admin_router
from airflow_provider_servicetitan.sandbox.api import api_router
from airflow_provider_servicetitan.sandbox.dates import DateHeaders
from airflow_provider_servicetitan.sandbox.middleware import FaultMiddleware
from airflow_provider_servicetitan.sandbox.problems import ProblemError
from airflow_provider_servicetitan.sandbox.state import SandboxState


def create_app(state: SandboxState) -> ASGIApp:
    """The ASGI app serving ``state``; run it on uvicorn (connection faults need uvicorn)."""
    api = FastAPI(title="ServiceTitan sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    api.include_router(admin_router(state))
    api.include_router(api_router(state))

    @api.exception_handler(ProblemError)
    async def problem(request: Request, exc: ProblemError) -> Response:
        return exc.response()

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return ProblemError(exc.status_code).response()

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors: dict[str, list[str]] = {}
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
            errors.setdefault(field, []).append(error["msg"])
        return ProblemError(400, "One or more validation errors occurred.", errors=errors).response()

    return DateHeaders(FaultMiddleware(api, state), state)
