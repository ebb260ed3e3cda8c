"""A PostgreSQL warehouse connection created the documented way, with the ``airflow`` CLI, is a real
``postgres`` connection (the ``[postgres]`` extra installs its provider) and works as the warehouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.sdk import DAG, task
from sqlalchemy import URL, Engine, MetaData, Table, inspect, make_url, select

from airflow_provider_servicetitan.hooks.warehouse import DEFAULT_WAREHOUSE_CONN_ID, open_store, warehouse_url
from tests.conftest import POSTGRES_URL
from tests.helpers import register

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def airflow_cli(*args: str) -> str:
    done = subprocess.run(
        [AIRFLOW, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def documented_warehouse_connection(airflow_db: None, postgres_engine: Engine) -> Iterator[str]:
    """``airflow connections add servicetitan_warehouse --conn-type postgres ...`` as docs/connection.md
    says, pointing at the test PostgreSQL; deleted afterwards."""
    url = make_url(POSTGRES_URL)
    args = [
        "--conn-type",
        "postgres",
        "--conn-host",
        url.host or "127.0.0.1",
        "--conn-port",
        str(url.port or 5432),
        "--conn-schema",
        url.database or "test",
        "--conn-login",
        url.username or "postgres",
    ]
    if url.password:
        args += ["--conn-password", url.password]
    airflow_cli("connections", "add", DEFAULT_WAREHOUSE_CONN_ID, *args)
    yield DEFAULT_WAREHOUSE_CONN_ID
    airflow_cli("connections", "delete", DEFAULT_WAREHOUSE_CONN_ID)


def test_the_connection_is_stored_as_postgres(documented_warehouse_connection) -> None:
    [stored] = json.loads(airflow_cli("connections", "get", documented_warehouse_connection, "--output", "json"))

    assert stored["conn_type"] == "postgres"


def test_the_connection_works_as_the_warehouse_of_a_task(documented_warehouse_connection, postgres_engine) -> None:
    prefix = f"st_wh_{uuid.uuid4().hex[:10]}"
    with DAG(dag_id=f"st_warehouse_{uuid.uuid4().hex[:12]}", schedule=None) as dag:

        @task(retries=0)
        def write_to_the_warehouse() -> str:
            url = warehouse_url(documented_warehouse_connection)
            with open_store(documented_warehouse_connection, table_prefix=prefix) as store:
                store.set_credential_status("servicetitan_acme", "ok", None, "fp-1")
            return url.drivername if isinstance(url, URL) else url

        write_to_the_warehouse()
    register(dag)

    try:
        run = dag.test()
        [ti] = run.get_task_instances()
        assert ti.state == "success"
        assert ti.xcom_pull(task_ids=ti.task_id) == "postgresql+psycopg2"
        statuses = Table(f"{prefix}_credential_status", MetaData(), autoload_with=postgres_engine)
        with postgres_engine.connect() as conn:
            rows = conn.execute(select(statuses.c.credential, statuses.c.status)).all()
        assert [tuple(row) for row in rows] == [("servicetitan_acme", "ok")]
    finally:
        left = MetaData()
        left.reflect(postgres_engine, only=lambda name, _: name.startswith(f"{prefix}_"))
        left.drop_all(postgres_engine)
    assert not [name for name in inspect(postgres_engine).get_table_names() if name.startswith(f"{prefix}_")]
