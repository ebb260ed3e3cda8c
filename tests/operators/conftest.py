"""Fixtures of the operator tests: real Airflow (migrated metadata DB, ``dag.test()``), connections
given as ``AIRFLOW_CONN_*`` variables, the sandbox, the test Redis and a warehouse on SQLite or PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG
from sqlalchemy import Engine, select

from airflow_provider_servicetitan.operators.recovery import ServiceTitanRecoveryOperator
from airflow_provider_servicetitan.operators.sync import ServiceTitanSyncOperator
from airflow_provider_servicetitan.sandbox import SandboxServer
from airflow_provider_servicetitan.storage.store import SyncStore
from tests.helpers import register, set_connection
from tests.notifications.conftest import webhook  # noqa: F401 - a fixture of the report tests too

WAREHOUSE_CONN_ID = "st_warehouse"
# Tight in-call retries: a test meets the retry path without waiting.
RETRY_SETTINGS = {"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.05, "max_elapsed": 20}


@dataclass(frozen=True)
class Warehouse:
    """The warehouse connection of a test and a unique table prefix, so tests never share tables."""

    conn_id: str
    url: str
    table_prefix: str

    def store(self) -> SyncStore:
        return SyncStore(self.url, table_prefix=self.table_prefix)


@pytest.fixture(params=["sqlite"])
def warehouse(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    """A warehouse connection: SQLite by default; parametrize indirectly with ``postgresql`` for PostgreSQL."""
    prefix = f"st_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        path: Path = request.getfixturevalue("tmp_path") / "warehouse.db"
        set_connection(monkeypatch, WAREHOUSE_CONN_ID, conn_type="sqlite", host=str(path))
        yield Warehouse(WAREHOUSE_CONN_ID, f"sqlite:///{path}", prefix)
        return
    engine: Engine = request.getfixturevalue("postgres_engine")
    url = engine.url
    set_connection(
        monkeypatch,
        WAREHOUSE_CONN_ID,
        conn_type="postgres",
        host=url.host,
        port=url.port,
        login=url.username,
        password=url.password,
        schema=url.database,
    )
    yield Warehouse(WAREHOUSE_CONN_ID, url.render_as_string(hide_password=False), prefix)
    SyncStore(engine, table_prefix=prefix).tables.metadata.drop_all(engine)


@dataclass
class OperatorEnv:
    """One sandbox, its tenants as ServiceTitan connections, and the operators and DAG runs built on them."""

    sandbox: SandboxServer
    warehouse: Warehouse
    redis_conn_id: str
    redis_namespace: str
    monkeypatch: pytest.MonkeyPatch

    def tenant(self, index: int) -> int:
        return self.sandbox.credentials[index].tenant_id

    def connect(self, index: int = 0, *, password: str | None = None, **extra: Any) -> str:
        """Define (or redefine) the connection ``st_tenant_<index>`` for a sandbox tenant.

        :param password: another client secret than the tenant's.
        :param extra: fields of the connection's extra to change or add (``app_key``, ``breaker``...).
        """
        cred = self.sandbox.credentials[index]
        conn_id = f"st_tenant_{index}"
        set_connection(
            self.monkeypatch,
            conn_id,
            conn_type="servicetitan",
            login=cred.client_id,
            password=password or cred.client_secret,
            extra={
                "app_key": cred.app_key,
                "tenant_id": str(cred.tenant_id),
                "environment": "integration",
                "auth_url": self.sandbox.token_url,
                "api_url": self.sandbox.base_url,
                "retry": RETRY_SETTINGS,
                **extra,
            },
        )
        return conn_id

    def sync(self, conn_id: str, **kwargs: Any) -> ServiceTitanSyncOperator:
        return ServiceTitanSyncOperator(
            task_id=f"sync_{conn_id}",
            servicetitan_conn_id=conn_id,
            warehouse_conn_id=self.warehouse.conn_id,
            redis_conn_id=self.redis_conn_id,
            redis_namespace=self.redis_namespace,
            table_prefix=self.warehouse.table_prefix,
            **kwargs,
        )

    def recovery(self, conn_id: str, **kwargs: Any) -> ServiceTitanRecoveryOperator:
        return ServiceTitanRecoveryOperator(
            task_id=f"recover_{conn_id}",
            servicetitan_conn_id=conn_id,
            warehouse_conn_id=self.warehouse.conn_id,
            redis_conn_id=self.redis_conn_id,
            redis_namespace=self.redis_namespace,
            table_prefix=self.warehouse.table_prefix,
            **kwargs,
        )

    @staticmethod
    def dag() -> DAG:
        return DAG(dag_id=f"st_test_{uuid.uuid4().hex[:12]}", schedule=None)

    @staticmethod
    def run(dag: DAG, when: datetime | None = None) -> Any:
        """Run ``dag`` once with ``dag.test()`` and return the DagRun; the same ``when`` re-runs the same run."""
        register(dag)
        if when is None:
            return dag.test()
        return dag.test(logical_date=when, run_after=when)

    def truth(self, index: int, resource: str) -> dict[int, tuple[str, bool, bool]]:
        """The sandbox's records: id -> (modifiedOn, active, deleted), deleted ones included."""
        return {
            row["id"]: (row["modifiedOn"], row["active"], row["deleted"])
            for row in self.sandbox.admin.truth(self.tenant(index), resource)
        }

    def stored(self, index: int, resource: str) -> dict[int, tuple[str, bool, bool]]:
        """The warehouse's records in the same shape as :meth:`truth`."""
        with closing(self.warehouse.store()) as store:
            table = store.tables.records[resource]
            query = select(table.c.id, table.c.payload, table.c.active, table.c.deleted).where(
                table.c.tenant_id == self.tenant(index)
            )
            with store.engine.connect() as conn:
                rows = conn.execute(query).all()
        return {row.id: (row.payload["modifiedOn"], row.active, row.deleted) for row in rows}


@pytest.fixture
def operator_env(
    airflow_db: None,
    start_sandbox: Callable[..., SandboxServer],
    warehouse: Warehouse,
    redis_connection: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., OperatorEnv]:
    """Start a sandbox with the given settings and return the environment built on it.

    Redis keys (tokens, breakers) live under the test's ``key_prefix``, which is cleaned afterwards.
    """

    def start(**sandbox_config: Any) -> OperatorEnv:
        sandbox = start_sandbox(**{"rate_limit": 1000, **sandbox_config})
        return OperatorEnv(sandbox, warehouse, redis_connection, key_prefix, monkeypatch)

    return start
