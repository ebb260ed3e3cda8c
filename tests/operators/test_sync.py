"""ServiceTitanSyncOperator run by real Airflow (``dag.test()``) against the sandbox, Redis and a real warehouse."""

from __future__ import annotations

import json
import math
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest

from airflow_provider_servicetitan.storage.models import RUN_COUNTERS

RESOURCES = ["customers", "jobs", "invoices"]
SUMMARY_KEYS = {"status", "message", *RUN_COUNTERS}
# Airflow retries without waiting, so a retry that should not happen shows up as try_number 2, not as a hang.
IMMEDIATE_RETRIES = {"retry_delay": timedelta(0), "retry_exponential_backoff": 0}


def task_instance(dagrun, task_id: str):
    return dagrun.get_task_instance(task_id)


def returned(dagrun, task_id: str):
    return task_instance(dagrun, task_id).xcom_pull(task_ids=task_id)


def export_requests(sandbox) -> int:
    return sandbox.admin.stats()["requests_by_endpoint"].get("export", 0)


@pytest.mark.parametrize("warehouse", ["sqlite", "postgresql"], indirect=True)
def test_full_sync_of_two_tenants_equals_the_truth(operator_env):
    env = operator_env(records=150, export_page_size=40)
    dag = env.dag()
    with dag:
        for index in range(2):
            env.sync(env.connect(index), servicetitan_resources=RESOURCES)

    dagrun = env.run(dag)

    assert dagrun.state == "success"
    pages = 0
    for index in range(2):
        task_id = f"sync_st_tenant_{index}"
        assert task_instance(dagrun, task_id).state == "success"
        result = returned(dagrun, task_id)
        assert set(result) == set(RESOURCES)
        for resource in RESOURCES:
            truth = env.truth(index, resource)
            assert any(deleted for _, _, deleted in truth.values())
            assert any(not active and not deleted for _, active, deleted in truth.values())
            assert env.stored(index, resource) == truth
            summary = result[resource]
            assert set(summary) == SUMMARY_KEYS
            assert summary["status"] == "success"
            assert summary["records_processed"] == summary["records_successful"] == len(truth)
            assert summary["records_failed"] == 0
            assert summary["pages"] >= math.ceil(len(truth) / 40)
            pages += summary["pages"]
        text = json.dumps(result)
        cred = env.sandbox.credentials[index]
        assert cred.client_secret not in text
        assert cred.app_key not in text
    assert export_requests(env.sandbox) == pages
    with closing(env.warehouse.store()) as store:
        log = store.get_run_log(dagrun.run_id)
    assert [(row.credential, row.resource, row.status) for row in log] == [
        (f"st_tenant_{index}", resource, "success") for index in range(2) for resource in sorted(RESOURCES)
    ]
    assert all(row.records_processed == row.records_successful + row.records_failed for row in log)


def test_second_run_picks_up_exactly_the_changes(operator_env):
    env = operator_env(records=150, export_page_size=40)
    dag = env.dag()
    with dag:
        for index in range(2):
            env.sync(env.connect(index), servicetitan_resources=RESOURCES)
    assert env.run(dag).state == "success"
    before = env.stored(0, "customers")
    live = sorted(record_id for record_id, (_, _, deleted) in before.items() if not deleted)
    admin, tenant = env.sandbox.admin, env.tenant(0)
    modified = [row["id"] for row in admin.mutate(tenant, "customers", "modify", ids=live[:3])["changed"]]
    admin.mutate(tenant, "customers", "delete", ids=live[3:5])
    created = [row["id"] for row in admin.mutate(tenant, "customers", "create", count=4)["changed"]]
    admin.mutate(env.tenant(1), "jobs", "deactivate", count=2)
    requests_before = export_requests(env.sandbox)

    dagrun = env.run(dag)

    assert dagrun.state == "success"
    changed = {(0, "customers"): 3 + 2 + 4, (1, "jobs"): 2}
    for index in range(2):
        result = returned(dagrun, f"sync_st_tenant_{index}")
        for resource in RESOURCES:
            assert (
                result[resource]["records_processed"]
                == result[resource]["records_successful"]
                == changed.get((index, resource), 0)
            )
            assert result[resource]["pages"] == 1
            assert env.stored(index, resource) == env.truth(index, resource)
    # One export request per (tenant, resource): each feed resumed from its checkpoint.
    assert export_requests(env.sandbox) - requests_before == 2 * len(RESOURCES)
    after = env.stored(0, "customers")
    assert all(after[i][0] != before[i][0] for i in modified)
    assert all(after[i][2] for i in live[3:5])
    assert set(created) <= set(after) - set(before)


def test_rerunning_the_same_run_stores_nothing_twice(operator_env):
    env = operator_env(records=150, export_page_size=40)
    dag = env.dag()
    with dag:
        env.sync(env.connect(0), servicetitan_resources=RESOURCES)
    when = datetime(2025, 1, 1, tzinfo=UTC)
    first = env.run(dag, when)
    snapshot = {resource: env.stored(0, resource) for resource in RESOURCES}

    again = env.run(dag, when)

    assert again.run_id == first.run_id
    assert task_instance(again, "sync_st_tenant_0").state == "success"
    with closing(env.warehouse.store()) as store:
        counts = {resource: store.count_records(env.tenant(0), resource) for resource in RESOURCES}
        log = store.get_run_log(again.run_id)
    for resource in RESOURCES:
        assert env.stored(0, resource) == snapshot[resource] == env.truth(0, resource)
        assert counts[resource] == len(snapshot[resource])
        # The summary is the run's sync log: the second try of the run added nothing to it.
        assert returned(again, "sync_st_tenant_0")[resource]["records_successful"] == len(snapshot[resource])
    # One log row per resource for the run, its records counted once.
    assert [(row.resource, row.status, row.records_successful) for row in log] == [
        (resource, "success", len(snapshot[resource])) for resource in sorted(RESOURCES)
    ]


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"password": "cs1.wrong-secret"}, id="client-secret"),
        pytest.param({"app_key": "ak1.wrong-key"}, id="app-key"),
    ],
)
def test_rejected_credential_fails_without_retries_and_is_skipped_until_it_is_fixed(operator_env, broken):
    env = operator_env()
    conn_id = env.connect(0, **broken)
    dag = env.dag()
    with dag:
        env.sync(conn_id, servicetitan_resources=RESOURCES, **IMMEDIATE_RETRIES)
    task_id = f"sync_{conn_id}"

    rejected = env.run(dag)

    ti = task_instance(rejected, task_id)
    assert (ti.state, ti.try_number, ti.max_tries) == ("failed", 1, 3)
    with closing(env.warehouse.store()) as store:
        status = store.get_credential_status(conn_id)
    assert status.status == "needs_attention"
    assert status.reason
    tokens_before = env.sandbox.admin.stats()["token_requests_total"]

    skipped = env.run(dag)

    assert task_instance(skipped, task_id).state == "skipped"
    assert env.sandbox.admin.stats()["token_requests_total"] == tokens_before
    with closing(env.warehouse.store()) as store:
        log = store.get_run_log(skipped.run_id)
    assert [(row.resource, row.status) for row in log] == [(resource, "skipped") for resource in sorted(RESOURCES)]

    env.connect(0)
    fixed = env.run(dag)

    assert task_instance(fixed, task_id).state == "success"
    assert {summary["status"] for summary in returned(fixed, task_id).values()} == {"success"}
    with closing(env.warehouse.store()) as store:
        assert store.get_credential_status(conn_id).status == "ok"
    for resource in RESOURCES:
        assert env.stored(0, resource) == env.truth(0, resource)


def test_unlicensed_module_is_skipped_and_the_others_are_synced(operator_env):
    env = operator_env(unlicensed_modules={1001: ["accounting"]})
    assert env.tenant(0) == 1001
    conn_id = env.connect(0)
    dag = env.dag()
    with dag:
        env.sync(conn_id, servicetitan_resources=RESOURCES)

    dagrun = env.run(dag)

    assert task_instance(dagrun, f"sync_{conn_id}").state == "success"
    result = returned(dagrun, f"sync_{conn_id}")
    assert {resource: summary["status"] for resource, summary in result.items()} == {
        "customers": "success",
        "jobs": "success",
        "invoices": "skipped",
    }
    assert env.stored(0, "customers") == env.truth(0, "customers")
    assert env.stored(0, "jobs") == env.truth(0, "jobs")
    assert env.stored(0, "invoices") == {}
    with closing(env.warehouse.store()) as store:
        log = {row.resource: row.status for row in store.get_run_log(dagrun.run_id)}
        status = store.get_credential_status(conn_id)
    assert log == {"customers": "success", "jobs": "success", "invoices": "skipped"}
    assert status.status == "degraded"
    assert "invoices" in status.reason


def test_retryable_failure_is_retried_by_airflow_and_keeps_the_checkpoints(operator_env):
    env = operator_env(records=100, export_page_size=40)
    # A breaker that stays closed: once the errors stop, the same credential syncs again at once.
    conn_id = env.connect(0, breaker={"failure_threshold": 100, "minimum_calls": 100})
    dag = env.dag()
    with dag:
        env.sync(conn_id, servicetitan_resources=RESOURCES, retries=1, **IMMEDIATE_RETRIES)
    assert env.run(dag).state == "success"
    with closing(env.warehouse.store()) as store:
        checkpoints = {resource: store.get_checkpoint(conn_id, resource) for resource in RESOURCES}
    created = env.sandbox.admin.mutate(env.tenant(0), "customers", "create", count=3)["changed"]
    env.sandbox.admin.set_faults(error_rate=1.0)

    failed = env.run(dag)

    ti = task_instance(failed, f"sync_{conn_id}")
    # Airflow retried the task (a retryable failure), and the retry failed too.
    assert (ti.state, ti.try_number) == ("failed", 2)
    with closing(env.warehouse.store()) as store:
        assert {resource: store.get_checkpoint(conn_id, resource) for resource in RESOURCES} == checkpoints
        log = store.get_run_log(failed.run_id)
    assert {row.resource: row.status for row in log} == dict.fromkeys(RESOURCES, "failed")
    # Each of the two tries made 3 attempts per resource: 2 retries each, added up in the run's log.
    assert {row.resource: row.retries for row in log} == dict.fromkeys(RESOURCES, 4)
    assert not {row["id"] for row in created} & set(env.stored(0, "customers"))

    env.sandbox.admin.set_faults(error_rate=0.0)
    resumed = env.run(dag)

    assert task_instance(resumed, f"sync_{conn_id}").state == "success"
    assert returned(resumed, f"sync_{conn_id}")["customers"]["records_successful"] == 3
    assert env.stored(0, "customers") == env.truth(0, "customers")
