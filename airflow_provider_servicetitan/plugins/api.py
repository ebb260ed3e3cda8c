"""The FastAPI app of the plugin, mounted by the api-server under ``/servicetitan``.

* ``GET /servicetitan/`` the page (HTML; its script and style under ``/servicetitan/static/``);
* ``GET /servicetitan/api/credentials`` every credential's health (JSON), ``GET .../{conn_id}`` one;
* ``POST /servicetitan/api/credentials/{conn_id}/breaker/reset`` close the breaker;
* ``POST /servicetitan/api/credentials/{conn_id}/breaker/hold`` ``{"minutes": N}``: hold it open;
* ``POST /servicetitan/api/credentials/{conn_id}/recover`` trigger the DAG for that credential;
* ``POST /servicetitan/api/dead-letters/{id}/handled`` ``{"note": "..."}``: close a dead letter by hand.

Authorization is Airflow's own (the configured auth manager decides), with the user from the
``Authorization: Bearer`` header or the UI's ``_token`` cookie: reading needs read access to the
DAG ``servicetitan_sync``, an action needs edit access to it. Actions need a JSON body
(``Content-Type: application/json``), which a cross-site form cannot send, and are logged with the
user's name (Python log and Airflow's audit log).
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations of the routes defined in
# create_app(), which name a local (the user dependency), so they must be evaluated where they are written.
import logging
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from airflow_provider_servicetitan.plugins import page, sources
from airflow_provider_servicetitan.plugins.handled import MAX_NOTE, mark_handled
from airflow_provider_servicetitan.plugins.health import CredentialHealth, CredentialTarget, collect, to_json

__all__ = ["MAX_HOLD_MINUTES", "URL_PREFIX", "create_app"]

log = logging.getLogger(__name__)

URL_PREFIX = "/servicetitan"
MAX_HOLD_MINUTES = 24 * 60
_REDIS_DOWN = "Redis is unreachable: the breaker was not changed"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)


class HoldBody(BaseModel):
    """How long to hold the breaker open."""

    minutes: float = Field(gt=0, le=MAX_HOLD_MINUTES, description="minutes the breaker stays open")


class HandledBody(BaseModel):
    """Why the dead letter needs no recovery."""

    note: str = Field(min_length=1, max_length=MAX_NOTE, description="why the record needs no recovery")


class EmptyBody(BaseModel):
    """Actions without parameters still take a JSON body (``{}``): a cross-site form cannot send one."""


def _security() -> tuple[Any, Any, Any]:
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag

    return (
        GetUserDep,
        Depends(requires_access_dag("GET", param_dag_id=sources.DAG_ID)),
        Depends(requires_access_dag("PUT", param_dag_id=sources.DAG_ID)),
    )


def _can_edit(user: Any) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return bool(get_auth_manager().is_authorized_dag(method="PUT", details=DagDetails(id=sources.DAG_ID), user=user))


def _user_name(user: Any) -> str:
    return str(user.get_name() or user.get_id())


def _ui_base(request: Request) -> str:
    """Where the Airflow UI is: the mount point of this app without its own prefix."""
    root = str(request.scope.get("root_path", ""))
    return root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else ""


def _redis() -> tuple[Any, bool]:
    """The shared Redis client, and whether it is down before it was even tried (no such connection)."""
    try:
        return sources.shared_redis(), False
    except Exception as error:  # a missing or invalid Redis connection: Airflow's exception types vary
        log.warning("ServiceTitan health: no Redis client (%s)", type(error).__name__)
        return None, True


def _targets(only: str | None = None) -> list[CredentialTarget]:
    found = sources.credential_ids()
    if only is not None:
        if only not in found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such ServiceTitan credential")
        found = {only: found[only]}
    client, _down = _redis()
    return [sources.build_target(conn_id, origin, client) for conn_id, origin in found.items()]


def _rows(request: Request, targets: list[CredentialTarget]) -> list[CredentialHealth]:
    client, down = _redis()
    try:
        store = sources.warehouse()
    except Exception as error:  # no warehouse connection, database down: the page still shows Redis state
        log.warning("ServiceTitan health: the warehouse cannot be opened (%s)", type(error).__name__)
        store = None
    links = sources.latest_tasks([target.conn_id for target in targets], _ui_base(request))
    return collect(targets, redis_client=client, store=store, latest_tasks=links, redis_down=down)


def _summary(rows: list[CredentialHealth]) -> dict[str, Any]:
    redis_states = {row.redis for row in rows}
    return {
        "redis": "down" if "down" in redis_states else ("not_configured" if "not_configured" in redis_states else "ok"),
        "warehouse": "down" if any(row.warehouse == "down" for row in rows) else "ok",
    }


def _breaker_of(conn_id: str) -> Any:
    target = _targets(conn_id)[0]
    if target.breaker is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the connection cannot be used: {target.problem}")
    if not target.breaker.redis_keys:
        if _redis()[1]:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, _REDIS_DOWN)
        raise HTTPException(status.HTTP_409_CONFLICT, "no Redis is configured: breakers are per process")
    return target.breaker


def _require_json(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send a JSON body (Content-Type: application/json)")


def create_app() -> FastAPI:
    """The app the plugin mounts (Airflow's security imported here: only in the api-server)."""
    user_dep, can_read, can_edit = _security()
    app = FastAPI(
        title="ServiceTitan health",
        description="Credential, circuit breaker, token, sync and dead letter health of the ServiceTitan provider.",
        version="1",
    )
    json_body = Depends(_require_json)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def health_page(request: Request) -> Response:
        if not request.url.path.endswith("/"):  # the page's relative links need the trailing slash
            return RedirectResponse(request.url.replace(path=request.url.path + "/"), status_code=307)
        return Response(page.HTML, media_type="text/html; charset=utf-8", headers=_page_headers())

    @app.get("/static/page.js", include_in_schema=False)
    def page_script() -> Response:
        return Response(page.SCRIPT, media_type="text/javascript; charset=utf-8", headers=_page_headers())

    @app.get("/static/page.css", include_in_schema=False)
    def page_style() -> Response:
        return Response(page.STYLE, media_type="text/css; charset=utf-8", headers=_page_headers())

    @app.get("/api/credentials", dependencies=[can_read], summary="Every credential's health")
    def list_credentials(request: Request, user: user_dep) -> dict[str, Any]:  # type: ignore[valid-type]
        rows = _rows(request, _targets())
        return {**_summary(rows), "can_edit": _can_edit(user), "credentials": to_json(rows)}

    @app.get("/api/credentials/{conn_id}", dependencies=[can_read], summary="One credential's health")
    def get_credential(conn_id: str, request: Request, user: user_dep) -> dict[str, Any]:  # type: ignore[valid-type]
        return {**_one(request, conn_id), "can_edit": _can_edit(user)}

    @app.post(
        "/api/credentials/{conn_id}/breaker/reset",
        dependencies=[can_edit, json_body],
        summary="Close the credential's circuit breaker and forget its failures",
    )
    def reset_breaker(conn_id: str, body: EmptyBody, request: Request, user: user_dep) -> dict[str, Any]:  # type: ignore[valid-type]
        breaker = _breaker_of(conn_id)
        breaker.reset()
        _require_shared(breaker)
        sources.audit("breaker_reset", _user_name(user), {"connection": conn_id, "breaker": breaker.name})
        return _one(request, conn_id)

    @app.post(
        "/api/credentials/{conn_id}/breaker/hold",
        dependencies=[can_edit, json_body],
        summary="Hold the credential's circuit breaker open for N minutes (a known outage)",
    )
    def hold_breaker(conn_id: str, body: HoldBody, request: Request, user: user_dep) -> dict[str, Any]:  # type: ignore[valid-type]
        breaker = _breaker_of(conn_id)
        breaker.force_open(body.minutes * 60)
        _require_shared(breaker)
        sources.audit(
            "breaker_hold_open",
            _user_name(user),
            {"connection": conn_id, "breaker": breaker.name, "minutes": body.minutes},
        )
        return _one(request, conn_id)

    @app.post(
        "/api/credentials/{conn_id}/recover",
        dependencies=[can_edit, json_body],
        summary="Run the DAG for this credential now: its sync, then the recovery of its dead letters",
    )
    def recover(conn_id: str, body: EmptyBody, user: user_dep) -> dict[str, Any]:  # type: ignore[valid-type]
        if conn_id not in sources.credential_ids():
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such ServiceTitan credential")
        name = _user_name(user)
        try:
            run_id = sources.trigger_recovery(conn_id, name)
        except Exception as error:
            log.warning("ServiceTitan health: recovery of %s not triggered (%s)", conn_id, type(error).__name__)
            raise HTTPException(status.HTTP_409_CONFLICT, f"the DAG {sources.DAG_ID} could not be triggered") from None
        sources.audit("recovery_triggered", name, {"connection": conn_id, "run_id": run_id})
        return {"dag_id": sources.DAG_ID, "dag_run_id": run_id, "connection": conn_id}

    @app.post(
        "/api/dead-letters/{dead_letter_id}/handled",
        dependencies=[can_edit, json_body],
        summary="Mark an open dead letter as handled, with a note",
    )
    def handled(dead_letter_id: int, body: HandledBody, user: user_dep) -> dict[str, Any]:  # type: ignore[valid-type]
        name = _user_name(user)
        try:
            store = sources.warehouse()
            letter = store.get_dead_letter(dead_letter_id)
            if letter is None or letter.credential not in sources.credential_ids():
                raise KeyError(dead_letter_id)
            kept = mark_handled(store, dead_letter_id, user=name, note=body.note)
        except KeyError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such dead letter") from None
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        if kept is None:
            raise HTTPException(status.HTTP_409_CONFLICT, "the dead letter is already resolved")
        sources.audit(
            "dead_letter_handled",
            name,
            {"connection": kept.credential, "dead_letter_id": dead_letter_id, "note": kept.note},
        )
        return to_json(kept)  # type: ignore[no-any-return]

    def _one(request: Request, conn_id: str) -> dict[str, Any]:
        rows = _rows(request, _targets(conn_id))
        return {**_summary(rows), "credential": to_json(rows[0])}

    return app


def _require_shared(breaker: Any) -> None:
    """The action reached Redis: a breaker that fell back to its per-process state changed nothing shared."""
    if breaker.backend != "redis":
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, _REDIS_DOWN)


def _page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Referrer-Policy": "same-origin",
    }
