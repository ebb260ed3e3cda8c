"""The notifier as the failure callback of real Airflow task runs (``dag.test()``, metadata DB)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from airflow.sdk import DAG, task

from airflow_provider_servicetitan.errors import RetryExhaustedError, ServiceTitanServerError
from airflow_provider_servicetitan.notifications import ServiceTitanAlertNotifier
from tests.helpers import register

from .conftest import WEBHOOK_CONN_ID


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


def test_exhausted_retries_tell_the_task_tries_airflow_made(airflow_db, webhook, redis_connection, key_prefix) -> None:
    alerts = ServiceTitanAlertNotifier(
        webhook_conn_id=WEBHOOK_CONN_ID, redis_conn_id=redis_connection, namespace=key_prefix
    )
    with DAG(dag_id=f"st_alert_{uuid.uuid4().hex[:12]}", schedule=None) as dag:

        @task(retries=2, retry_delay=timedelta(0), on_failure_callback=alerts)
        def sync(servicetitan_conn_id: str) -> None:
            last = ServiceTitanServerError(status=500, title="Internal Server Error", trace_id="trace-run")
            raise RetryExhaustedError(2, last)

        sync("servicetitan_a")
    register(dag)

    dag.test()

    [text] = webhook.texts
    told = re.search(r"after 3 Airflow task tries \(try 3 of 3; the DAG run started (\d+ s|\d+ min) ago\)\.", text)
    assert told, text
    assert "The last try's calls gave up after 2 attempts" in text
    assert "try_number=3" in text
