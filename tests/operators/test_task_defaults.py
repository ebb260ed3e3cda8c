"""A credential's Airflow retries hold whether its sync task is mapped or not, and the DAG passes them."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_provider_servicetitan.operators.sync import CREDENTIAL_TASK_DEFAULTS, ServiceTitanSyncOperator
from tests.dags.test_servicetitan_sync import load_dag_module


def retry_settings(task: object) -> dict[str, object]:
    return {name: getattr(task, name) for name in CREDENTIAL_TASK_DEFAULTS}


def test_an_unmapped_sync_task_has_the_credential_defaults() -> None:
    with DAG(dag_id="st_defaults_unmapped", schedule=None):
        task = ServiceTitanSyncOperator(task_id="sync", servicetitan_conn_id="st_acme")

    assert retry_settings(task) == CREDENTIAL_TASK_DEFAULTS


def test_a_mapped_sync_task_has_them_only_from_partial() -> None:
    with DAG(dag_id="st_defaults_mapped", schedule=None):
        bare = ServiceTitanSyncOperator.partial(task_id="bare").expand(servicetitan_conn_id=["st_acme"])
        given = ServiceTitanSyncOperator.partial(task_id="given", **CREDENTIAL_TASK_DEFAULTS).expand(
            servicetitan_conn_id=["st_acme"]
        )

    # Airflow builds a mapped task from partial(): the operator's __init__ defaults never apply.
    assert bare.retries != CREDENTIAL_TASK_DEFAULTS["retries"]
    assert retry_settings(given) == CREDENTIAL_TASK_DEFAULTS


def test_the_dag_gives_both_per_credential_tasks_the_defaults(monkeypatch) -> None:
    dag = load_dag_module(monkeypatch, {}).dag

    for task_id in ("credential.sync", "credential.recover"):
        task = dag.get_task(task_id)
        assert {name: getattr(task, name) for name in CREDENTIAL_TASK_DEFAULTS} == CREDENTIAL_TASK_DEFAULTS
