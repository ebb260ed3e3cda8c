"""ServiceTitanReportOperator run by real Airflow: parked records only a person can resolve are
counted and alerted as such, and earlier runs found interrupted are shown."""

from __future__ import annotations

from contextlib import closing
from datetime import timedelta

from airflow_provider_servicetitan.notifications import dead_letter_alert
from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier
from airflow_provider_servicetitan.operators.report import ServiceTitanReportOperator
from airflow_provider_servicetitan.storage import INTERRUPTED, RunOwner
from airflow_provider_servicetitan.sync.liveness import this_process
from tests.notifications.conftest import WEBHOOK_CONN_ID
from tests.sync.test_interrupted_runs import exited_pid

RESOURCES = ["customers", "jobs"]
MAX_ATTEMPTS = 3


def report(env, conn_id: str, **kwargs) -> ServiceTitanReportOperator:
    return ServiceTitanReportOperator(
        task_id="report",
        connections=[conn_id],
        warehouse_conn_id=env.warehouse.conn_id,
        table_prefix=env.warehouse.table_prefix,
        max_recovery_attempts=MAX_ATTEMPTS,
        **kwargs,
    )


def returned(dagrun, task_id: str):
    return dagrun.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def test_records_without_an_id_need_a_person_from_the_first_run_and_are_alerted(operator_env, webhook):
    env = operator_env(records=150, export_page_size=40, fault_overrides={"malformed_rate": 0.1})
    conn_id = env.connect(0)
    notifier = ServiceTitanAlertNotifier(
        webhook_conn_id=WEBHOOK_CONN_ID, redis_conn_id=env.redis_conn_id, namespace=env.redis_namespace
    )
    dag = env.dag()
    with dag:
        (
            env.sync(conn_id, servicetitan_resources=RESOURCES)
            >> env.recovery(conn_id, max_attempts=MAX_ATTEMPTS)
            # A threshold no run reaches: only records that need a person can alert.
            >> report(env, conn_id, notifier=notifier, dead_letter_threshold=1000)
        )

    first = env.run(dag)

    with closing(env.warehouse.store()) as store:
        letters = store.unresolved_dead_letters(conn_id)
    without_id = [letter for letter in letters if letter.record_number is None]
    assert 0 < len(without_id) < len(letters)
    totals = returned(first, "report")[conn_id]
    assert (totals["open_dead_letters"], totals["needs_attention"]) == (len(letters), len(without_id))
    assert returned(first, f"recover_{conn_id}")["needs_attention"] == len(without_id)
    (alert,) = webhook.texts
    assert "too many failed records" in alert.lower()
    assert f"needs_a_person={len(without_id)}" in alert

    env.sandbox.admin.set_faults(malformed_rate=0.0)
    second = env.run(dag, first.logical_date + timedelta(hours=1))

    totals = returned(second, "report")[conn_id]
    assert (totals["open_dead_letters"], totals["needs_attention"]) == (len(without_id), len(without_id))
    # Still the same incident: not alerted twice, and not resolved while a person is needed.
    assert len(webhook.texts) == 1


def test_a_credential_back_under_the_threshold_is_resolved_once(operator_env, webhook):
    env = operator_env()
    conn_id = env.connect(0)
    notifier = ServiceTitanAlertNotifier(
        webhook_conn_id=WEBHOOK_CONN_ID, redis_conn_id=env.redis_conn_id, namespace=env.redis_namespace
    )
    assert notifier.send(dead_letter_alert(conn_id, 80, 50)), "an earlier run alerted"
    dag = env.dag()
    with dag:
        env.sync(conn_id, servicetitan_resources=RESOURCES, retries=0) >> report(env, conn_id, notifier=notifier)

    first = env.run(dag)
    env.run(dag, first.logical_date + timedelta(hours=1))

    alerted, resolved = webhook.texts
    assert alerted.startswith(f"*[ServiceTitan] Too many failed records: {conn_id}*")
    assert resolved.startswith(f"*[ServiceTitan] Resolved: {conn_id}*")
    assert "Closed its open incidents: Too many failed records." in resolved
    assert notifier.dedup.open_incidents(conn_id) == []


def test_the_report_shows_the_earlier_runs_its_syncs_found_interrupted(operator_env):
    env = operator_env()
    conn_id = env.connect(0)
    me = this_process()
    with closing(env.warehouse.store()) as store:
        store.create_tables()
        store.start_run("scheduled__earlier", conn_id, "customers", RunOwner(me.host, me.scope, exited_pid()))
    dag = env.dag()
    with dag:
        env.sync(conn_id, servicetitan_resources=RESOURCES) >> report(env, conn_id)

    dagrun = env.run(dag)

    (shown,) = returned(dagrun, "report")[conn_id]["interrupted"]
    assert (shown["run_id"], shown["resource"]) == ("scheduled__earlier", "customers")
    assert shown["interrupted_at"] is not None
    assert "is gone" in shown["message"]
    with closing(env.warehouse.store()) as store:
        (earlier,) = store.get_run_log("scheduled__earlier")
    assert (earlier.status, earlier.interrupted_by) == (INTERRUPTED, dagrun.run_id)

    later = env.run(dag, dagrun.logical_date + timedelta(hours=1))

    assert returned(later, "report")[conn_id]["interrupted"] == []
