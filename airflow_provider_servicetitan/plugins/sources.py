"""The Airflow side of the health page: which credentials, their breakers and token keys, the latest
task of each, the audit log, and a recovery run. Runs inside the api-server.

Credentials are the connections of type ``servicetitan`` in the metadata DB plus the connection ids
of the Variable ``servicetitan_connections`` (the DAG's list; those may live in a secrets backend).
Each one's breaker is the one :class:`~airflow_provider_servicetitan.hooks.servicetitan.ServiceTitanHook`
builds (same name, configuration and namespace), on one shared fail-fast Redis client per process.
The warehouse and table prefix are the DAG's (``SERVICETITAN_WAREHOUSE_CONN_ID``,
``SERVICETITAN_TABLE_PREFIX``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import redis

from airflow_provider_servicetitan.client.auth.cache import token_cache_key
from airflow_provider_servicetitan.errors import ServiceTitanError
from airflow_provider_servicetitan.get_provider_info import CONNECTION_TYPE
from airflow_provider_servicetitan.hooks import settings
from airflow_provider_servicetitan.hooks.redis import redis_from_connection
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook, breaker_name
from airflow_provider_servicetitan.hooks.warehouse import DEFAULT_WAREHOUSE_CONN_ID, open_store
from airflow_provider_servicetitan.plugins.health import CredentialTarget, TaskLink
from airflow_provider_servicetitan.resilience.breaker import CircuitBreaker
from airflow_provider_servicetitan.shards import CREDENTIAL_GROUP
from airflow_provider_servicetitan.storage import SyncStore

__all__ = [
    "CONNECTIONS_VARIABLE",
    "CREDENTIAL_TASKS",
    "DAG_ID",
    "audit",
    "build_target",
    "credential_ids",
    "latest_tasks",
    "shared_redis",
    "trigger_recovery",
    "warehouse",
]

log = logging.getLogger(__name__)

DAG_ID = "servicetitan_sync"
CONNECTIONS_VARIABLE = "servicetitan_connections"
CREDENTIAL_TASKS = ("sync", "recover")
"""The per-credential tasks of the DAG, in the group of each shard (mapped, ``map_index_template`` = the
connection id): ``credential.sync``, ``credential_2.sync``, ... (see :mod:`~airflow_provider_servicetitan.shards`)."""

_lock = threading.Lock()
_redis_clients: dict[str, redis.Redis] = {}
_stores: dict[tuple[str, str], SyncStore] = {}


def credential_ids() -> dict[str, tuple[str, ...]]:
    """Every credential to show, with where it was found (``connection``, ``variable``), in order:
    connections by id, then the Variable's other ids in its order."""
    from airflow.models import Connection, Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    found: dict[str, list[str]] = {}
    with create_session() as session:
        for conn_id in session.scalars(
            select(Connection.conn_id).where(Connection.conn_type == CONNECTION_TYPE).order_by(Connection.conn_id)
        ):
            found.setdefault(conn_id, []).append("connection")
    try:
        listed = Variable.get(CONNECTIONS_VARIABLE, default_var=None, deserialize_json=True)
    except (ValueError, TypeError):
        log.warning("ServiceTitan health: the Variable %s is not a JSON list", CONNECTIONS_VARIABLE)
        listed = None
    if isinstance(listed, list):
        for conn_id in listed:
            if isinstance(conn_id, str) and conn_id:
                found.setdefault(conn_id, []).append("variable")
    return {conn_id: tuple(sources) for conn_id, sources in found.items()}


def shared_redis() -> redis.Redis | None:
    """The process's fail-fast client of the ``[servicetitan] redis_conn_id`` Redis (``None``: none set)."""
    conn_id = settings.redis_conn_id()
    if conn_id is None:
        return None
    with _lock:
        client = _redis_clients.get(conn_id)
        if client is None:
            client = _redis_clients[conn_id] = redis_from_connection(conn_id)
        return client


def build_target(conn_id: str, sources: tuple[str, ...], client: redis.Redis | None) -> CredentialTarget:
    """The breaker and token key of ``conn_id``, as its hook builds them; a connection that cannot be
    used gives a target with a ``problem`` (its text names a field, never a value of a secret)."""
    hook = ServiceTitanHook(conn_id, redis_conn_id=None)
    try:
        credentials = hook.get_credentials()
        config = hook.get_breaker_config()
    except ServiceTitanError as error:
        return CredentialTarget(conn_id, None, None, sources, f"{type(error).__name__}: {error}")
    except Exception as error:  # a missing connection: Airflow's own exception types vary by version
        return CredentialTarget(conn_id, None, None, sources, f"{type(error).__name__}: connection cannot be read")
    namespace = settings.redis_namespace()
    breaker = CircuitBreaker(breaker_name(credentials), client, config=config, namespace=namespace)
    token_key = token_cache_key(namespace, credentials) if client is not None else None
    return CredentialTarget(conn_id, breaker, token_key, sources)


def warehouse() -> SyncStore:
    """The DAG's warehouse store, opened once per process (tables created if missing)."""
    conn_id = os.environ.get("SERVICETITAN_WAREHOUSE_CONN_ID", DEFAULT_WAREHOUSE_CONN_ID)
    prefix = os.environ.get("SERVICETITAN_TABLE_PREFIX", "servicetitan")
    with _lock:
        store = _stores.get((conn_id, prefix))
        if store is None:
            store = _stores[(conn_id, prefix)] = open_store(conn_id, table_prefix=prefix)
        return store


def latest_tasks(conn_ids: Sequence[str], base_url: str = "") -> dict[str, tuple[TaskLink, ...]]:
    """The latest ``sync`` and ``recover`` task instance of each credential (one ``LIMIT 1`` query per
    credential and task), with links to its page in the UI and its log in the REST API."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import or_, select

    links: dict[str, tuple[TaskLink, ...]] = {}
    with create_session() as session:
        for conn_id in conn_ids:
            found = []
            for task in CREDENTIAL_TASKS:
                ti = session.execute(
                    select(
                        TaskInstance.task_id,
                        TaskInstance.run_id,
                        TaskInstance.map_index,
                        TaskInstance.try_number,
                        TaskInstance.state,
                        TaskInstance.start_date,
                    )
                    .where(
                        TaskInstance.dag_id == DAG_ID,
                        or_(
                            TaskInstance.task_id == f"{CREDENTIAL_GROUP}.{task}",
                            TaskInstance.task_id.like(f"{CREDENTIAL_GROUP}\\_%.{task}", escape="\\"),
                        ),
                        TaskInstance._rendered_map_index == conn_id,
                    )
                    .order_by(TaskInstance.start_date.desc().nulls_last())
                    .limit(1)
                ).one_or_none()
                if ti is None:
                    continue
                task_id = ti.task_id
                run, quoted_task = quote(ti.run_id, safe=""), quote(task_id, safe="")
                try_number = max(int(ti.try_number or 0), 1)
                found.append(
                    TaskLink(
                        task_id=task_id,
                        run_id=ti.run_id,
                        map_index=int(ti.map_index),
                        try_number=try_number,
                        state=None if ti.state is None else str(ti.state),
                        start_date=ti.start_date,
                        ui_url=f"{base_url}/dags/{DAG_ID}/runs/{run}/tasks/{quoted_task}/mapped/{ti.map_index}",
                        log_api_url=(
                            f"{base_url}/api/v2/dags/{DAG_ID}/dagRuns/{run}/taskInstances/{quoted_task}/logs/{try_number}"
                            f"?map_index={ti.map_index}"
                        ),
                    )
                )
            links[conn_id] = tuple(found)
    return links


def audit(event: str, user: str, extra: dict[str, Any]) -> None:
    """Log an action with who did it: to the Python log, and to Airflow's audit log (``Log`` table,
    the UI's Audit Log of the DAG)."""
    log.info("ServiceTitan health: %s by %s: %s", event, user, json.dumps(extra, sort_keys=True))
    try:
        from airflow.models.log import Log
        from airflow.utils.session import create_session

        with create_session() as session:
            session.add(Log(event=f"servicetitan.{event}", owner=user, dag_id=DAG_ID, extra=json.dumps(extra)))
    except Exception:  # the action happened: a failed audit row must not hide it; the log line above stays
        log.exception("ServiceTitan health: %s by %s could not be written to the audit log", event, user)


def trigger_recovery(conn_id: str, user: str) -> str:
    """Trigger ``servicetitan_sync`` for ``conn_id`` alone (its sync, then the recovery of its dead
    letters), as ``user``; returns the run id. The run queues behind a running one (``max_active_runs``)."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.types import DagRunTriggeredByType

    now = datetime.now(UTC)
    run = trigger_dag(
        DAG_ID,
        triggered_by=DagRunTriggeredByType.REST_API,
        triggering_user_name=user,
        run_id=f"servicetitan_recover__{conn_id}__{now.strftime('%Y%m%dT%H%M%S%f')}"[:250],
        conf={"connections": [conn_id]},
        logical_date=now,
        replace_microseconds=False,
        note=f"Recovery of {conn_id} requested by {user} on the ServiceTitan health page",
    )
    if run is None:
        raise RuntimeError(f"DAG {DAG_ID} was not triggered")
    return str(run.run_id)
