"""The notifier as the failure callback of real Airflow task runs (``dag.test()``, metadata DB)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.dag_processing.collection import update_dag_parsing_results_in_db
from airflow.sdk import DAG, task
from airflow.serialization.serialized_objects import LazyDeserializedDAG
from airflow.utils.session import create_session

from airflow_provider_servicetitan.errors import RetryExhaustedError, ServiceTitanServerError
from airflow_provider_servicetitan.notifications import ServiceTitanAlertNotifier

from .conftest import WEBHOOK_CONN_ID


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """The session's Airflow metadata DB (SQLite in the temp ``AIRFLOW_HOME``), migrated."""
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"airflow db migrate failed:\n{done.stdout}\n{done.stderr}"


def register(dag: DAG) -> None:
    """Serialize ``dag`` into the metadata DB, as the DAG processor would: dag.test() runs only known DAGs."""
    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )


def test_failed_mapped_tasks_alert_once_per_credential(airflow_db, webhook, redis_connection, key_prefix) -> None:
    alerts = ServiceTitanAlertNotifier(
        webhook_conn_id=WEBHOOK_CONN_ID, redis_conn_id=redis_connection, namespace=key_prefix
    )
    with DAG(dag_id=f"st_alert_{uuid.uuid4().hex[:12]}", schedule=None) as dag:

        @task(retries=0, on_failure_callback=alerts)
        def sync(servicetitan_conn_id: str) -> None:
            last = ServiceTitanServerError(status=500, title="Internal Server Error", trace_id="trace-run")
            raise RetryExhaustedError(5, last)

        sync.expand(servicetitan_conn_id=["servicetitan_a", "servicetitan_b", "servicetitan_a"])
    register(dag)

    dag.test()

    texts = sorted(webhook.texts)
    assert len(texts) == 2
    for text, credential in zip(texts, ["servicetitan_a", "servicetitan_b"], strict=True):
        assert text.startswith(f"*[ServiceTitan] Retries exhausted: {credential}*")
        assert "traceId trace-run" in text
        assert f"/dags/{dag.dag_id}/runs/" in text
        assert "/tasks/sync/mapped/" in text
