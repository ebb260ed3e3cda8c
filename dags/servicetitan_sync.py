"""The ``servicetitan_sync`` DAG: sync every ServiceTitan credential, recover, report.

Each credential is a mapped task group ``credential`` named by its connection id: ``sync`` then
``recover``, so one credential's recovery follows its own sync only. ``report`` sees every
credential; ``all_credentials_synced`` is the run's verdict: the run fails when a credential's sync
(or recovery) failed, after the report and recoveries ran. A credential skipped as known bad shows
as skipped. Clearing a failed ``sync`` with its downstream tasks (the UI's default) re-runs that
credential's recovery, the report and the verdict.

Copy this file into your DAGs folder (or point a DAG bundle at it). Settings, read when the file is
parsed, come from environment variables so that no Variable is read at parse time:

- ``SERVICETITAN_SYNC_SCHEDULE``: cron or preset, ``@hourly`` by default;
- ``SERVICETITAN_WAREHOUSE_CONN_ID``: where data goes, ``servicetitan_warehouse`` by default;
- ``SERVICETITAN_TABLE_PREFIX``: the warehouse table prefix (``servicetitan``);
- ``SERVICETITAN_ALERT_WEBHOOK_CONN_ID`` / ``SERVICETITAN_ALERT_EMAIL``: alert channels (optional);
- ``SERVICETITAN_DEAD_LETTER_THRESHOLD``: parked records per credential that call a person (50);
- ``SERVICETITAN_MAX_CONCURRENCY``: resources of one credential synced at the same time (4);
- ``SERVICETITAN_CREDENTIAL_SHARDS``: mapped groups of credentials (1), see below.

The shared Redis (tokens, breakers, alert deduplication) and its key prefix are the provider's
``[servicetitan] redis_conn_id`` / ``redis_namespace`` settings, the same for this DAG, the hook and
the connection's Test button.

The credentials to sync are the connection ids in the Airflow Variable
``servicetitan_connections`` (a JSON list), read at run time, or the ``connections`` param given
when the DAG is triggered.

More credentials than Airflow maps at once (``[core] max_map_length``, 1024 by default): set
``SERVICETITAN_CREDENTIAL_SHARDS`` to the number of mapped groups (1 by default). Shard 1 is the
group ``credential``, shard k the group ``credential_k`` after a task ``shard_k`` that picks its
credentials; they fill the shards in list order, ``max_map_length`` each, so appending one never
moves another. Too many for the shards fails ``list_credentials`` before anything syncs, saying
how many shards are needed. Each credential stays its own task instance, named by its connection id.

To re-export one resource (or a few) of one credential from scratch or from a day, trigger the DAG
with config (``Trigger DAG`` in the UI, or ``airflow dags trigger servicetitan_sync --conf ...``):
``reexport_from`` = ``start`` or ``YYYY-MM-DD``, ``reexport_connection`` = the connection id,
``reexport_resources`` = the resources. Everything else of the run syncs as usual. Records are
upserted by id, so a re-export never duplicates; an interrupted one is resumed by the task's retry
or finished by the next run. An invalid request fails ``list_credentials`` before anything syncs.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, Variable, task, task_group
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES
from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier
from airflow_provider_servicetitan.operators.recovery import ServiceTitanRecoveryOperator
from airflow_provider_servicetitan.operators.report import ServiceTitanReportOperator
from airflow_provider_servicetitan.operators.sync import CREDENTIAL_TASK_DEFAULTS, ServiceTitanSyncOperator
from airflow_provider_servicetitan.shards import SHARDS_SETTING, check_capacity, group_id, parse_shards, shard_of
from airflow_provider_servicetitan.sync.credential import DEFAULT_MAX_CONCURRENCY
from airflow_provider_servicetitan.sync.reexport import REEXPORT_FROM_START, check_reexport_request
from airflow_provider_servicetitan.task_retry import ServiceTitanRetryPolicy

CONNECTIONS_VARIABLE = "servicetitan_connections"
WAREHOUSE_CONN_ID = os.environ.get("SERVICETITAN_WAREHOUSE_CONN_ID", "servicetitan_warehouse")
TABLE_PREFIX = os.environ.get("SERVICETITAN_TABLE_PREFIX", "servicetitan")
MAX_RECOVERY_ATTEMPTS = 3
# Rendered per mapped sync task: the re-export applies only to the credential the param names.
_IF_REEXPORTED_HERE = "if params.reexport_connection == task.servicetitan_conn_id else ''"
CREDENTIAL_SHARDS = parse_shards(os.environ.get(SHARDS_SETTING))

alerts = ServiceTitanAlertNotifier(
    webhook_conn_id=os.environ.get("SERVICETITAN_ALERT_WEBHOOK_CONN_ID") or None,
    email_to=os.environ.get("SERVICETITAN_ALERT_EMAIL") or None,
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
        ),
        "reexport_from": Param(
            None,
            type=["null", "string"],
            pattern=rf"^({REEXPORT_FROM_START}|[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}})?$",
            description=(
                f"Re-export instead of resuming from the checkpoint: '{REEXPORT_FROM_START}' (from scratch) "
                "or a date YYYY-MM-DD; empty: a normal sync"
            ),
        ),
        "reexport_connection": Param(
            None,
            type=["null", "string"],
            description="The one connection to re-export (one of the run's connections)",
        ),
        "reexport_resources": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "enum": list(EXPORTABLE_RESOURCES)},
            description="The resources of that connection to re-export; its other resources sync as usual",
        ),
        "probe_now": Param(
            False,
            type="boolean",
            description=(
                "Ask each credential's circuit breaker for one probe at once, whatever its remaining open time "
                "(a Clear of a sync task does this by itself)"
            ),
        ),
    },
    # The run's own tasks (list, report) retry like a credential's; the mapped ones get theirs from partial().
    default_args=CREDENTIAL_TASK_DEFAULTS,
    doc_md=__doc__,
) as dag:

    @task
    def list_credentials(params: dict[str, Any]) -> list[str]:
        """The credentials of this run: the ``connections`` param, else the Variable; checks a re-export."""
        chosen = params.get("connections") or Variable.get(CONNECTIONS_VARIABLE, default=None, deserialize_json=True)
        if not isinstance(chosen, list) or not chosen or not all(isinstance(c, str) and c for c in chosen):
            raise AirflowFailException(
                f"set the Variable {CONNECTIONS_VARIABLE!r} (or the 'connections' param) to a non-empty JSON list "
                f'of ServiceTitan connection ids, e.g. ["servicetitan_acme"]; got {chosen!r}'
            )
        credentials = list(dict.fromkeys(chosen))
        try:
            check_capacity(len(credentials), shards=CREDENTIAL_SHARDS, max_map_length=_max_map_length())
        except ValueError as too_many:
            raise AirflowFailException(str(too_many)) from None
        try:
            check_reexport_request(
                params.get("reexport_from"),
                params.get("reexport_connection"),
                params.get("reexport_resources"),
                connections=credentials,
                exportable=EXPORTABLE_RESOURCES,
            )
        except ValueError as invalid:
            raise AirflowFailException(f"invalid re-export request: {invalid}") from None
        return credentials

    credentials = list_credentials()

    @task
    def shard(credentials: list[str], number: int) -> list[str]:
        """The credentials of shard ``number``: the next ``[core] max_map_length`` of the run's list."""
        return shard_of(credentials, number, max_map_length=_max_map_length())

    # What both per-credential tasks share: named by credential in the UI, same stores, same alerts,
    # the same Airflow retries.
    per_credential: dict[str, Any] = {
        **CREDENTIAL_TASK_DEFAULTS,
        "map_index_template": "{{ task.servicetitan_conn_id }}",
        "warehouse_conn_id": WAREHOUSE_CONN_ID,
        "table_prefix": TABLE_PREFIX,
        "retry_policy": ServiceTitanRetryPolicy(),
        "on_failure_callback": alerts,
    }

    @task_group
    def sync_then_recover(servicetitan_conn_id: str) -> None:
        """One credential: its sync, then the recovery of its parked records whatever the sync did."""
        synced = ServiceTitanSyncOperator(
            task_id="sync",
            servicetitan_conn_id=servicetitan_conn_id,
            alert_notifier=alerts,
            reexport_from="{{ (params.reexport_from or '') " + _IF_REEXPORTED_HERE + " }}",
            reexport_resources="{{ (params.reexport_resources or []) | join(',') " + _IF_REEXPORTED_HERE + " }}",
            probe_now="{{ params.probe_now }}",
            max_concurrency=int(os.environ.get("SERVICETITAN_MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY)),
            **per_credential,
        )
        recovered = ServiceTitanRecoveryOperator(
            task_id="recover",
            servicetitan_conn_id=servicetitan_conn_id,
            trigger_rule="all_done",
            max_attempts=MAX_RECOVERY_ATTEMPTS,
            **per_credential,
        )
        synced >> recovered

    # One mapped group per shard; a single shard maps straight over the run's list.
    groups = [group_id(number) for number in range(1, CREDENTIAL_SHARDS + 1)]
    chains = [
        sync_then_recover.override(group_id=group).expand(
            servicetitan_conn_id=credentials
            if CREDENTIAL_SHARDS == 1
            else shard.override(task_id=f"shard_{number}")(credentials, number)
        )
        for number, group in enumerate(groups, 1)
    ]

    report = ServiceTitanReportOperator(
        task_id="report",
        connections=credentials,
        warehouse_conn_id=WAREHOUSE_CONN_ID,
        table_prefix=TABLE_PREFIX,
        notifier=alerts,
        dead_letter_threshold=int(os.environ.get("SERVICETITAN_DEAD_LETTER_THRESHOLD", "50")),
        max_recovery_attempts=MAX_RECOVERY_ATTEMPTS,
        trigger_rule="all_done",
    )
    # The run's leaf: failed (upstream_failed) when any credential's sync or recovery failed, so the
    # run's state, DAG-level callbacks and deadlines see it; skipped credentials are not failures.
    # Run by the scheduler itself (an empty task takes no worker slot).
    verdict = EmptyOperator(task_id="all_credentials_synced", trigger_rule="none_failed")

    chains >> report >> verdict
    [dag.task_dict[f"{group}.{task_id}"] for group in groups for task_id in ("sync", "recover")] >> verdict


def _max_map_length() -> int:
    """``[core] max_map_length`` as the task sees it (every Airflow component must agree on it)."""
    from airflow.sdk.configuration import conf

    return conf.getint("core", "max_map_length", fallback=1024)
