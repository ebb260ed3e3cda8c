"""The shipped ``servicetitan_sync`` DAG: imports cleanly, has the promised shape, and runs in Airflow."""

from __future__ import annotations

import importlib.util
import uuid
import warnings
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.models.asset import AssetEvent
from airflow.sdk import AssetAlias
from airflow.sdk.definitions.taskgroup import MappedTaskGroup
from airflow.utils.session import create_session
from sqlalchemy import select

from airflow_provider_servicetitan.operators.sync import synced_asset
from tests.helpers import register
from tests.notifications.conftest import WEBHOOK_CONN_ID

DAGS = Path(__file__).resolve().parents[2] / "dags"
DEAD_LETTER_THRESHOLD = 3
SYNC, RECOVER = "credential.sync", "credential.recover"


def load_dag_module(monkeypatch, env) -> ModuleType:
    """Import the DAG file afresh with the deployment settings of ``env`` (read at parse time)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location(
        f"servicetitan_sync_{uuid.uuid4().hex}", DAGS / "servicetitan_sync.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dag_folder_imports_without_errors_or_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(DAGS))

    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["servicetitan_downstream_example", "servicetitan_sync"]
    ours = [w for w in caught if "servicetitan" in str(w.filename) or "servicetitan" in str(w.message)]
    assert ours == []


def test_dag_structure(monkeypatch):
    dag = load_dag_module(monkeypatch, {}).dag

    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert {"servicetitan", "sync"} <= set(dag.tags)
    assert "servicetitan_connections" in dag.doc_md
    assert [t.task_id for t in dag.tasks] == [
        "list_credentials",
        "credential.sync",
        "credential.recover",
        "report",
        "all_credentials_synced",
    ]
    sync, recover = dag.get_task("credential.sync"), dag.get_task("credential.recover")
    report, verdict = dag.get_task("report"), dag.get_task("all_credentials_synced")
    # One mapped group per credential: recover[i] waits for sync[i] only.
    assert sync.task_group.group_id == recover.task_group.group_id == "credential"
    assert isinstance(sync.task_group, MappedTaskGroup)
    assert sync.map_index_template == recover.map_index_template == "{{ task.servicetitan_conn_id }}"
    assert recover.trigger_rule == "all_done"
    assert report.trigger_rule == "all_done"
    assert sync.retry_exponential_backoff == 2.0
    assert sync.retry_policy is not None
    assert sync.on_failure_callback
    assert sync.deferrable is True
    assert [outlet.name for outlet in sync.outlets] == ["servicetitan"]
    assert set(sync.downstream_task_ids) == {"credential.recover", "all_credentials_synced"}
    assert set(recover.downstream_task_ids) == {"report", "all_credentials_synced"}
    # The verdict is the only leaf and fails when a sync, a recovery or the report failed.
    assert [task.task_id for task in dag.leaves] == ["all_credentials_synced"]
    assert verdict.trigger_rule == "none_failed"
    assert set(verdict.upstream_task_ids) == {"credential.sync", "credential.recover", "report"}


def test_downstream_example_is_scheduled_on_the_sync_asset_alias():
    bag = DagBag(dag_folder=str(DAGS / "servicetitan_downstream_example.py"))
    dag = bag.dags.get("servicetitan_downstream_example")

    assert dag is not None
    assert dag.timetable.asset_condition == AssetAlias(name="servicetitan")


def load_dag_for(env, monkeypatch, **settings: str):
    """The DAG as deployed on ``env`` (its warehouse, Redis, alerts), with more ``settings``; registered."""
    dag = load_dag_module(
        monkeypatch,
        {
            "SERVICETITAN_WAREHOUSE_CONN_ID": env.warehouse.conn_id,
            "AIRFLOW__SERVICETITAN__REDIS_CONN_ID": env.redis_conn_id,
            "AIRFLOW__SERVICETITAN__REDIS_NAMESPACE": env.redis_namespace,
            "SERVICETITAN_TABLE_PREFIX": env.warehouse.table_prefix,
            "SERVICETITAN_ALERT_WEBHOOK_CONN_ID": WEBHOOK_CONN_ID,
            "SERVICETITAN_DEAD_LETTER_THRESHOLD": str(DEAD_LETTER_THRESHOLD),
            **settings,
        },
    ).dag
    register(dag)
    return dag


@pytest.fixture
def dag_env(operator_env, webhook, monkeypatch):
    env = operator_env(tenants=2, records=60, export_page_size=30)
    return env, load_dag_for(env, monkeypatch)


def task_states(dag_run) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}


def test_two_credentials_sync_and_no_alert_fires(dag_env, webhook, monkeypatch):
    env, dag = dag_env
    connections = [env.connect(0), env.connect(1)]
    monkeypatch.setenv("AIRFLOW_VAR_SERVICETITAN_CONNECTIONS", f'["{connections[0]}", "{connections[1]}"]')

    dag_run = dag.test()

    assert dag_run.state == "success"
    assert set(task_states(dag_run).values()) == {"success"}
    assert len([key for key in task_states(dag_run) if key[0] == SYNC]) == 2
    for index in range(2):
        for resource in ("customers", "jobs", "invoices"):
            assert env.stored(index, resource) == env.truth(index, resource)
    assert webhook.bodies == []


def test_bad_credential_fails_once_and_alerts_once(dag_env, webhook, monkeypatch):
    env, dag = dag_env
    good, bad = env.connect(0), env.connect(1, password="not-the-secret")
    monkeypatch.setenv("AIRFLOW_VAR_SERVICETITAN_CONNECTIONS", f'["{good}", "{bad}"]')

    dag_run = dag.test()

    sync_tis = {ti.map_index: ti for ti in dag_run.get_task_instances() if ti.task_id == SYNC}
    failed = [ti for ti in sync_tis.values() if ti.state == "failed"]
    assert len(failed) == 1
    assert failed[0].try_number == 1
    assert [ti.state for ti in sync_tis.values()].count("success") == 1
    # The run tells the truth, after every credential's recovery and the report ran.
    states = task_states(dag_run)
    assert dag_run.state == "failed"
    assert states[("all_credentials_synced", -1)] == "upstream_failed"
    assert states[("report", -1)] == "success"
    assert [states[(RECOVER, index)] for index in sync_tis] == ["success", "success"]
    assert len(webhook.bodies) == 1
    assert "needs attention" in webhook.texts[0].lower()
    assert bad in webhook.texts[0]
    assert "not-the-secret" not in webhook.texts[0]
    with env.warehouse.store() as store:
        assert store.get_credential_status(bad).status == "needs_attention"


def test_chaos_on_one_tenant_leaves_the_other_complete_and_heals(dag_env, webhook, monkeypatch):
    env, dag = dag_env
    healthy, chaotic = env.connect(0), env.connect(1)
    monkeypatch.setenv("AIRFLOW_VAR_SERVICETITAN_CONNECTIONS", f'["{healthy}", "{chaotic}"]')
    # Chaos with its rates, on the second tenant only; the time-dependent knobs are made neutral
    # (no per-second rate limit, short holds) so the seeded fault sequence replays exactly.
    env.sandbox.admin.set_faults("chaos", tenants=[env.tenant(1)], rate_limit=None, timeout_hold=0.2)

    first = dag.test()

    assert task_states(first)[("report", -1)] == "success"
    assert first.state == "success"  # records parked, none lost: the sync itself succeeded
    for resource in ("customers", "jobs", "invoices"):
        assert env.stored(0, resource) == env.truth(0, resource)
    with env.warehouse.store() as store:
        parked = store.unresolved_dead_letters(chaotic)
        assert parked
        assert store.unresolved_dead_letters(healthy) == []
    # The seeded chaos exhausts no retries and opens no breaker: the one incident is the parked records.
    assert len(parked) > DEAD_LETTER_THRESHOLD
    assert len(webhook.texts) == 1
    assert "too many failed records" in webhook.texts[0].lower()
    assert chaotic in webhook.texts[0]

    env.sandbox.admin.set_faults("none")  # the incident is over: the next run heals what it parked
    second = dag.test(logical_date=first.logical_date + timedelta(hours=1))

    assert set(task_states(second).values()) == {"success"}
    with env.warehouse.store() as store:
        left = store.unresolved_dead_letters(chaotic)
        recovered = sum(row.records_recovered for row in store.get_run_log(second.run_id))
    usable = [letter for letter in parked if letter.record_number is not None]
    assert recovered == len(usable)
    assert {letter.id for letter in left} == {letter.id for letter in parked if letter not in usable}
    # Records left without an id need a person: the same incident, no new message; none left: "resolved".
    assert len(webhook.texts) == (1 if left else 2)
    for resource in ("customers", "jobs", "invoices"):
        stored, truth = env.stored(1, resource), env.truth(1, resource)
        assert stored.items() <= truth.items()
        assert len(truth) - len(stored) == len([x for x in left if x.resource == resource])


def test_a_credential_skipped_as_known_bad_shows_as_skipped(dag_env, webhook, monkeypatch):
    env, dag = dag_env
    good, bad = env.connect(0), env.connect(1, password="not-the-secret")
    monkeypatch.setenv("AIRFLOW_VAR_SERVICETITAN_CONNECTIONS", f'["{good}", "{bad}"]')
    first = dag.test()
    assert first.state == "failed"

    second = dag.test(logical_date=first.logical_date + timedelta(hours=1))

    states = task_states(second)
    assert sorted(states[(SYNC, index)] for index in range(2)) == ["skipped", "success"]
    assert states[("all_credentials_synced", -1)] == "success"
    assert second.state == "success"
    assert len(webhook.bodies) == 1  # the rejection alerted once, the skip does not alert again


def test_each_synced_resource_is_an_asset_event_with_the_run_counts(dag_env, monkeypatch):
    env, dag = dag_env
    connection = env.connect(0)
    monkeypatch.setenv("AIRFLOW_VAR_SERVICETITAN_CONNECTIONS", f'["{connection}"]')

    dag_run = dag.test()

    assert dag_run.state == "success"
    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(AssetEvent.source_run_id == dag_run.run_id).order_by(AssetEvent.id)
        ).all()
        uris = {event.asset.uri: event.extra for event in events}
    with env.warehouse.store() as store:
        rows = {row.resource: row for row in store.get_run_log(dag_run.run_id, connection)}
    assert set(uris) == {synced_asset(connection, resource).uri for resource in rows}
    for resource, row in rows.items():
        extra = uris[f"servicetitan://{connection}/{resource}"]
        assert extra["records_successful"] == row.records_successful == len(env.truth(0, resource))
        assert extra["pages"] == row.pages
        assert extra["connection_id"] == connection
