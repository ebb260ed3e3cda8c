"""More credentials than Airflow maps at once: ``SERVICETITAN_CREDENTIAL_SHARDS`` mapped groups, each
of at most ``[core] max_map_length``, every credential its own task instance named by its connection id."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.definitions.taskgroup import MappedTaskGroup
from sqlalchemy import create_engine, inspect

from airflow_provider_servicetitan.plugins import sources
from tests.dags.test_servicetitan_sync import load_dag_for, load_dag_module, task_states
from tests.operators.test_sync_waits import logged

CREDENTIALS = 25
MAX_MAP_LENGTH = 10
RESOURCES = ("customers", "jobs", "invoices")


def test_each_shard_is_a_mapped_group_and_the_verdict_waits_for_all(monkeypatch):
    dag = load_dag_module(monkeypatch, {"SERVICETITAN_CREDENTIAL_SHARDS": "3"}).dag

    groups = ("credential", "credential_2", "credential_3")
    assert [t.task_id for t in dag.tasks] == [
        "list_credentials",
        *(
            task_id
            for number, group in enumerate(groups, 1)
            for task_id in (f"shard_{number}", f"{group}.sync", f"{group}.recover")
        ),
        "report",
        "all_credentials_synced",
    ]
    for number, group in enumerate(groups, 1):
        sync, recover = dag.get_task(f"{group}.sync"), dag.get_task(f"{group}.recover")
        assert isinstance(sync.task_group, MappedTaskGroup)
        assert sync.task_group.group_id == recover.task_group.group_id == group
        assert sync.map_index_template == "{{ task.servicetitan_conn_id }}"
        assert dag.get_task(f"shard_{number}").upstream_task_ids == {"list_credentials"}
        assert set(recover.downstream_task_ids) == {"report", "all_credentials_synced"}
    verdict = dag.get_task("all_credentials_synced")
    assert verdict.upstream_task_ids == {"report"} | {f"{g}.{t}" for g in groups for t in ("sync", "recover")}


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_wrong_shard_count_fails_the_dag_file_naming_the_setting(monkeypatch, value):
    with pytest.raises(ValueError, match="SERVICETITAN_CREDENTIAL_SHARDS must be a whole number of at least 1"):
        load_dag_module(monkeypatch, {"SERVICETITAN_CREDENTIAL_SHARDS": value})


@pytest.fixture
def many(operator_env, webhook, monkeypatch):
    """25 credentials of small tenants, listed in the Variable, with ``[core] max_map_length`` = 10."""
    env = operator_env(tenants=CREDENTIALS, records=3, export_page_size=50)
    connections = [env.connect(index) for index in range(CREDENTIALS)]
    monkeypatch.setenv("AIRFLOW_VAR_SERVICETITAN_CONNECTIONS", json.dumps(connections))
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", str(MAX_MAP_LENGTH))
    return env, connections


def test_three_shards_of_ten_sync_twenty_five_credentials_each_named(many, monkeypatch):
    env, connections = many
    dag = load_dag_for(env, monkeypatch, SERVICETITAN_CREDENTIAL_SHARDS="3")

    dag_run = dag.test()

    assert dag_run.state == "success", task_states(dag_run)
    tis = dag_run.get_task_instances()
    named = {
        group: [
            ti.rendered_map_index for ti in sorted(tis, key=lambda ti: ti.map_index) if ti.task_id == f"{group}.sync"
        ]
        for group in ("credential", "credential_2", "credential_3")
    }
    # In list order, max_map_length per shard: appending a credential never moves another one.
    assert named == {
        "credential": connections[:10],
        "credential_2": connections[10:20],
        "credential_3": connections[20:],
    }
    assert {ti.state for ti in tis} == {"success"}
    for index in range(CREDENTIALS):
        for resource in RESOURCES:
            assert env.stored(index, resource) == env.truth(index, resource), (connections[index], resource)
    # The health page finds a credential's latest tasks in whichever shard it is.
    links = sources.latest_tasks([connections[-1]])[connections[-1]]
    assert [(link.task_id, link.run_id, link.map_index) for link in links] == [
        ("credential_3.sync", dag_run.run_id, 4),
        ("credential_3.recover", dag_run.run_id, 4),
    ]


@pytest.mark.parametrize(("shards", "listed"), [(1, 11), (2, 25)])
def test_too_many_credentials_fail_before_anything_syncs(many, monkeypatch, capfd, caplog, shards, listed):
    env, connections = many
    monkeypatch.setenv("AIRFLOW_VAR_SERVICETITAN_CONNECTIONS", json.dumps(connections[:listed]))
    dag = load_dag_for(env, monkeypatch, SERVICETITAN_CREDENTIAL_SHARDS=str(shards))

    dag_run = dag.test()

    states = task_states(dag_run)
    assert dag_run.state == "failed"
    assert states.pop(("list_credentials", -1)) == "failed"
    needed = -(-listed // MAX_MAP_LENGTH)
    assert f"set SERVICETITAN_CREDENTIAL_SHARDS to {needed} or more" in logged(capfd, caplog)
    # No run to sum up: the report skips at once instead of failing and retrying for minutes.
    assert states.pop(("report", -1)) == "skipped"
    assert set(states.values()) == {"upstream_failed"}
    # Not a table of the warehouse was touched.
    engine = create_engine(env.warehouse.url)
    try:
        assert [name for name in inspect(engine).get_table_names() if name.startswith(env.warehouse.table_prefix)] == []
    finally:
        engine.dispose()
