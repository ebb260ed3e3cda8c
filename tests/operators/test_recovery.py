"""ServiceTitanRecoveryOperator run by real Airflow: records a sync parked are recovered, the unfixable reported."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import closing

RESOURCES = ["customers", "jobs"]


def deleted(letter) -> bool:
    """Whether the parked record, as it was received, said it is deleted."""
    return json.loads(letter.raw).get("deleted") is True


def returned(dagrun, task_id: str):
    return dagrun.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def test_parked_records_are_recovered_and_the_unfixable_ones_reported(operator_env):
    env = operator_env(records=150, export_page_size=40, fault_overrides={"malformed_rate": 0.1})
    conn_id = env.connect(0)
    sync_dag = env.dag()
    with sync_dag:
        env.sync(conn_id, servicetitan_resources=RESOURCES)

    synced = env.run(sync_dag)

    assert synced.get_task_instance(f"sync_{conn_id}").state == "success"
    with closing(env.warehouse.store()) as store:
        letters = store.unresolved_dead_letters(conn_id)
        sync_log = {row.resource: row for row in store.get_run_log(synced.run_id)}
    parked = Counter(letter.resource for letter in letters)
    summaries = returned(synced, f"sync_{conn_id}")
    for resource in RESOURCES:
        summary, row = summaries[resource], sync_log[resource]
        assert summary["status"] == row.status == "partial"
        assert summary["records_processed"] == row.records_processed == len(env.truth(0, resource))
        assert row.records_processed == row.records_successful + row.records_failed
        assert summary["records_successful"] == row.records_successful
        assert summary["records_failed"] == row.records_failed == parked[resource] > 0
    assert all(letter.error_class == "RecordValidationError" and letter.message for letter in letters)
    usable = [letter for letter in letters if letter.record_number is not None]
    unusable = [letter for letter in letters if letter not in usable]
    # The sandbox breaks records three ways: an unreadable modifiedOn or an id like "ST-123" (both
    # fetched again by the number), or no id at all (only a person can place it).
    assert any(letter.record_id.startswith("ST-") for letter in usable)
    assert any(letter.record_id.isdigit() for letter in usable)
    assert unusable
    assert all(letter.record_id is None for letter in unusable)

    env.sandbox.admin.set_faults(malformed_rate=0.0)
    recovery_dag = env.dag()
    with recovery_dag:
        env.recovery(conn_id, max_attempts=2)
    first = env.run(recovery_dag)

    with closing(env.warehouse.store()) as store:
        usable_now = [store.get_dead_letter(letter.id) for letter in usable]
        still_open = store.unresolved_dead_letters(conn_id)
        recovery_log = {row.resource: row.records_recovered for row in store.get_run_log(first.run_id)}
    unresolved = [
        (letter.resource, letter.record_id, deleted(letter), letter.message)
        for letter in usable_now
        if letter.resolved_at is None
    ]
    assert unresolved == [], "letters with a usable id were not resolved"
    assert returned(first, f"recover_{conn_id}") == {
        "credential": conn_id,
        "status": "success",
        "attempted": len(usable),
        "recovered": len(usable),
        "failed": 0,
        "needs_attention": len(unusable),
    }
    assert recovery_log == dict(Counter(letter.resource for letter in usable))
    assert [letter.id for letter in still_open] == [letter.id for letter in unusable]
    # Never attempted: they cannot be fetched again, they need a person from the start.
    assert all(letter.attempts == 0 and letter.error_class == "RecordValidationError" for letter in still_open)
    stored_after_recovery = {}
    for resource in RESOURCES:
        truth, stored = env.truth(0, resource), env.stored(0, resource)
        assert stored == {record_id: truth[record_id] for record_id in stored}
        # Missing: the records without a usable id (only a person can place them), and maybe deleted ones
        # (a record deleted upstream need not be stored).
        missing = {record_id for record_id in set(truth) - set(stored) if not truth[record_id][2]}
        assert len(missing) == sum(letter.resource == resource and not deleted(letter) for letter in unusable)
        stored_after_recovery[resource] = stored

    second = env.run(recovery_dag)

    assert returned(second, f"recover_{conn_id}") == {
        "credential": conn_id,
        "status": "success",
        "attempted": 0,
        "recovered": 0,
        "failed": 0,
        "needs_attention": len(unusable),
    }
    with closing(env.warehouse.store()) as store:
        assert all(store.get_dead_letter(letter.id).resolved_run_id == first.run_id for letter in usable)
        assert all(store.get_dead_letter(letter.id).attempts == 0 for letter in unusable)
        assert store.get_run_log(second.run_id) == []
    assert {resource: env.stored(0, resource) for resource in RESOURCES} == stored_after_recovery


def test_recovery_runs_after_a_failed_sync(operator_env):
    env = operator_env(fault_overrides={"error_rate": 1.0})
    conn_id = env.connect(0)
    dag = env.dag()
    with dag:
        # Not deferred: the sync fails at once instead of waiting for the breaker in the triggerer.
        env.sync(conn_id, servicetitan_resources=RESOURCES, retries=0, deferrable=False) >> env.recovery(conn_id)

    dagrun = env.run(dag)

    assert dagrun.get_task_instance(f"sync_{conn_id}").state == "failed"
    assert dagrun.get_task_instance(f"recover_{conn_id}").state == "success"
    assert returned(dagrun, f"recover_{conn_id}")["attempted"] == 0
