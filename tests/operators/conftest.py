"""Fixtures of the operator tests: real Airflow (migrated metadata DB, ``dag.test()``), connections
given as ``AIRFLOW_CONN_*`` variables, the sandbox, the test Redis and a warehouse on SQLite or PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.dag_processing.collection import update_dag_parsing_results_in_db
from airflow.sdk import DAG
from airflow.serialization.serialized_objects import LazyDeserializedDAG
from airflow.utils.session import create_session
from sqlalchemy import Engine, select

from airflow_provider_servicetitan.operators.recovery import ServiceTitanRecoveryOperator
from airflow_provider_servicetitan.operators.sync import ServiceTitanSyncOperator
from airflow_provider_servicetitan.sandbox import SandboxServer
from airflow_provider_servicetitan.storage.store import SyncStore

WAREHOUSE_CONN_ID = "st_warehouse"
REDIS_CONN_ID = "st_redis"
# Tight in-call retries: a test meets the retry path without waiting.
RETRY_SETTINGS = {"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.05, "max_elapsed": 20}
# The bundle dag.test() looks DAGs up in (Airflow's default one).
DAG_BUNDLE = "dags-folder"


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **conn: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """The session's Airflow metadata DB (SQLite in the temp ``AIRFLOW_HOME``), migrated once."""
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"airflow db migrate failed:\n{done.stdout}\n{done.stderr}"


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


@pytest.fixture
def redis_connection(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> str:
    parsed = urlparse(redis_url)
    set_connection(
        monkeypatch,
        REDIS_CONN_ID,
        conn_type="redis",
        host=parsed.hostname,
        port=parsed.port,
        extra={"db": int(parsed.path.strip("/") or 0)},
    )
    return REDIS_CONN_ID


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


def register(dag: DAG) -> None:
    """Serialize ``dag`` into the metadata DB, as the DAG processor would: dag.test() runs only known DAGs."""
    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    with create_session() as session:
        update_dag_parsing_results_in_db(
            DAG_BUNDLE, None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )


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
