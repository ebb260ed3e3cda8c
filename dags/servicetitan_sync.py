"""The ``servicetitan_sync`` DAG: sync every ServiceTitan credential, recover, report.

Copy this file into your DAGs folder (or point a DAG bundle at it). Settings, read when the file is
parsed, come from environment variables so that no Variable is read at parse time:

- ``SERVICETITAN_SYNC_SCHEDULE``: cron or preset, ``@hourly`` by default;
- ``SERVICETITAN_WAREHOUSE_CONN_ID``: where data goes, ``servicetitan_warehouse`` by default;
- ``SERVICETITAN_REDIS_CONN_ID``: shared tokens, breakers and alert dedup, ``redis_default``;
- ``SERVICETITAN_REDIS_NAMESPACE`` / ``SERVICETITAN_TABLE_PREFIX``: key and table prefixes (``servicetitan``);
- ``SERVICETITAN_ALERT_WEBHOOK_CONN_ID`` / ``SERVICETITAN_ALERT_EMAIL``: alert channels (optional);
- ``SERVICETITAN_DEAD_LETTER_THRESHOLD``: parked records per credential that call a person (50).

The credentials to sync are the connection ids in the Airflow Variable
``servicetitan_connections`` (a JSON list), read at run time, or the ``connections`` param given
when the DAG is triggered.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param, Variable, task
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier
from airflow_provider_servicetitan.operators.recovery import ServiceTitanRecoveryOperator
from airflow_provider_servicetitan.operators.report import ServiceTitanReportOperator
from airflow_provider_servicetitan.operators.sync import ServiceTitanSyncOperator
from airflow_provider_servicetitan.task_retry import ServiceTitanRetryPolicy

CONNECTIONS_VARIABLE = "servicetitan_connections"
WAREHOUSE_CONN_ID = os.environ.get("SERVICETITAN_WAREHOUSE_CONN_ID", "servicetitan_warehouse")
REDIS_CONN_ID = os.environ.get("SERVICETITAN_REDIS_CONN_ID", "redis_default")
REDIS_NAMESPACE = os.environ.get("SERVICETITAN_REDIS_NAMESPACE", "servicetitan")
TABLE_PREFIX = os.environ.get("SERVICETITAN_TABLE_PREFIX", "servicetitan")

alerts = ServiceTitanAlertNotifier(
    webhook_conn_id=os.environ.get("SERVICETITAN_ALERT_WEBHOOK_CONN_ID") or None,
    email_to=os.environ.get("SERVICETITAN_ALERT_EMAIL") or None,
    redis_conn_id=REDIS_CONN_ID,
    namespace=REDIS_NAMESPACE,
)

with DAG(
    dag_id="servicetitan_sync",
    schedule=os.environ.get("SERVICETITAN_SYNC_SCHEDULE", "@hourly"),
    catchup=False,
    max_active_runs=1,
    tags=["servicetitan", "sync"],
    params={
        "connections": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            description=f"ServiceTitan connection ids to sync; empty: the Variable {CONNECTIONS_VARIABLE}",
        )
    },
    default_args={
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    },
    doc_md=__doc__,
) as dag:

    @task
    def list_credentials(params: dict[str, Any]) -> list[str]:
        """The credentials of this run: the ``connections`` param, else the Variable."""
        chosen = params.get("connections") or Variable.get(CONNECTIONS_VARIABLE, default=None, deserialize_json=True)
        if not isinstance(chosen, list) or not chosen or not all(isinstance(c, str) and c for c in chosen):
            raise AirflowFailException(
                f"set the Variable {CONNECTIONS_VARIABLE!r} (or the 'connections' param) to a non-empty JSON list "
                f'of ServiceTitan connection ids, e.g. ["servicetitan_acme"]; got {chosen!r}'
            )
        return list(dict.fromkeys(chosen))

    credentials = list_credentials()

    # What both per-credential tasks share: named by credential in the UI, same stores, same alerts.
    per_credential: dict[str, Any] = {
        "map_index_template": "{{ task.servicetitan_conn_id }}",
        "warehouse_conn_id": WAREHOUSE_CONN_ID,
        "redis_conn_id": REDIS_CONN_ID,
        "redis_namespace": REDIS_NAMESPACE,
        "table_prefix": TABLE_PREFIX,
        "retry_policy": ServiceTitanRetryPolicy(),
        "on_failure_callback": alerts,
    }
    synced = ServiceTitanSyncOperator.partial(task_id="sync", alert_notifier=alerts, **per_credential).expand(
        servicetitan_conn_id=credentials
    )
    # A mapped operator takes its trigger rule from partial(), not from the operator's default.
    recovered = ServiceTitanRecoveryOperator.partial(
        task_id="recover", trigger_rule="all_done", **per_credential
    ).expand(servicetitan_conn_id=credentials)

    report = ServiceTitanReportOperator(
        task_id="report",
        connections=credentials,
        warehouse_conn_id=WAREHOUSE_CONN_ID,
        table_prefix=TABLE_PREFIX,
        notifier=alerts,
        dead_letter_threshold=int(os.environ.get("SERVICETITAN_DEAD_LETTER_THRESHOLD", "50")),
        trigger_rule="all_done",
    )

    synced >> recovered >> report
