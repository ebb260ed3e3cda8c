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

from tests.helpers import register
from tests.notifications.conftest import WEBHOOK_CONN_ID

DAGS = Path(__file__).resolve().parents[2] / "dags"
DEAD_LETTER_THRESHOLD = 3


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
    assert list(bag.dag_ids) == ["servicetitan_sync"]
    ours = [w for w in caught if "servicetitan" in str(w.filename) or "servicetitan" in str(w.message)]
    assert ours == []


def test_dag_structure(monkeypatch):
    dag = load_dag_module(monkeypatch, {}).dag

    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert {"servicetitan", "sync"} <= set(dag.tags)
    assert "servicetitan_connections" in dag.doc_md
    assert [t.task_id for t in dag.tasks] == ["list_credentials", "sync", "recover", "report"]
    sync, recover, report = dag.get_task("sync"), dag.get_task("recover"), dag.get_task("report")
    assert sync.partial_kwargs["map_index_template"] == "{{ task.servicetitan_conn_id }}"
    assert recover.partial_kwargs["trigger_rule"] == "all_done"
    assert report.trigger_rule == "all_done"
    assert sync.partial_kwargs["retry_exponential_backoff"] == 2.0
    assert sync.partial_kwargs["retry_policy"] is not None
    assert sync.partial_kwargs["on_failure_callback"]
    assert set(sync.downstream_task_ids) == {"recover"}
    assert set(recover.downstream_task_ids) == {"report"}


@pytest.fixture
def dag_env(operator_env, webhook, monkeypatch):
    env = operator_env(tenants=2, records=60, export_page_size=30)
    settings = {
        "SERVICETITAN_WAREHOUSE_CONN_ID": env.warehouse.conn_id,
        "SERVICETITAN_REDIS_CONN_ID": env.redis_conn_id,
        "SERVICETITAN_REDIS_NAMESPACE": env.redis_namespace,
        "SERVICETITAN_TABLE_PREFIX": env.warehouse.table_prefix,
        "SERVICETITAN_ALERT_WEBHOOK_CONN_ID": WEBHOOK_CONN_ID,
        "SERVICETITAN_DEAD_LETTER_THRESHOLD": str(DEAD_LETTER_THRESHOLD),
    }
    dag = load_dag_module(monkeypatch, settings).dag
    register(dag)
    return env, dag


def task_states(dag_run) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}


def test_two_credentials_sync_and_no_alert_fires(dag_env, webhook, monkeypatch):
    env, dag = dag_env
    connections = [env.connect(0), env.connect(1)]
    monkeypatch.setenv("AIRFLOW_VAR_SERVICETITAN_CONNECTIONS", f'["{connections[0]}", "{connections[1]}"]')

    dag_run = dag.test()

    assert set(task_states(dag_run).values()) == {"success"}
    assert len([key for key in task_states(dag_run) if key[0] == "sync"]) == 2
    for index in range(2):
        for resource in ("customers", "jobs", "invoices"):
            assert env.stored(index, resource) == env.truth(index, resource)
    assert webhook.bodies == []


def test_bad_credential_fails_once_and_alerts_once(dag_env, webhook, monkeypatch):
    env, dag = dag_env
    good, bad = env.connect(0), env.connect(1, password="not-the-secret")
    monkeypatch.setenv("AIRFLOW_VAR_SERVICETITAN_CONNECTIONS", f'["{good}", "{bad}"]')

    dag_run = dag.test()

    sync_tis = {ti.map_index: ti for ti in dag_run.get_task_instances() if ti.task_id == "sync"}
    failed = [ti for ti in sync_tis.values() if ti.state == "failed"]
    assert len(failed) == 1
    assert failed[0].try_number == 1
    assert [ti.state for ti in sync_tis.values()].count("success") == 1
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
