"""The sync engine against the sandbox and a real database: complete, resumable, idempotent."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal

from airflow_provider_servicetitan.sync.engine import SyncEvents, sync_resource
from airflow_provider_servicetitan.sync.recovery import recover_dead_letters
from tests.helpers import credentials_for, wait_for
from tests.sync import workers

CTX = multiprocessing.get_context("spawn")


def truth(sandbox, tenant_id: int, resource: str) -> dict[int, str]:
    return {row["id"]: row["modifiedOn"] for row in sandbox.admin.truth(tenant_id, resource)}


def stored(store, tenant_id: int, resource: str) -> dict[int, str]:
    rows = {}
    for record_id in store.record_ids(tenant_id, resource):
        record = store.get_record(tenant_id, resource, record_id)
        rows[record_id] = record.payload["modifiedOn"]
    return rows


def test_full_sync_of_two_tenants_equals_truth_and_rerun_changes_nothing(start_sandbox, make_client, store):
    sandbox = start_sandbox(records=150, export_page_size=40)
    for index in range(2):
        client = make_client(credentials_for(sandbox, index=index))
        for resource in ("customers", "jobs", "invoices"):
            summary = sync_resource(client, store, credential=f"st_{index}", resource=resource, run_id="run-1")
            assert summary.status == "success"
            assert summary.processed == summary.successful == len(truth(sandbox, client.tenant_id, resource))
            assert stored(store, client.tenant_id, resource) == truth(sandbox, client.tenant_id, resource)

            again = sync_resource(client, store, credential=f"st_{index}", resource=resource, run_id="run-2")
            assert again.successful == 0
            assert store.count_records(client.tenant_id, resource) == len(truth(sandbox, client.tenant_id, resource))


def test_incremental_run_picks_up_exactly_the_changes(start_sandbox, make_client, store):
    sandbox = start_sandbox(records=100, export_page_size=30)
    client = make_client(credentials_for(sandbox))
    tenant = client.tenant_id
    sync_resource(client, store, credential="st", resource="customers", run_id="run-1")
    ids = sorted(row["id"] for row in sandbox.admin.truth(tenant, "customers") if not row.get("deleted"))
    sandbox.admin.mutate(tenant, "customers", "modify", ids=ids[:3])
    sandbox.admin.mutate(tenant, "customers", "delete", ids=ids[3:5])
    sandbox.admin.mutate(tenant, "customers", "create", count=4)

    summary = sync_resource(client, store, credential="st", resource="customers", run_id="run-2")

    assert summary.processed == 3 + 2 + 4
    assert stored(store, tenant, "customers") == truth(sandbox, tenant, "customers")
    assert all(store.get_record(tenant, "customers", i).deleted for i in ids[3:5])


def test_killed_sync_resumes_from_its_checkpoint(start_sandbox, store, store_url):
    sandbox = start_sandbox(records=400, export_page_size=20)
    credentials = credentials_for(sandbox)
    total_pages = -(-len(truth(sandbox, credentials.tenant_id, "customers")) // 20)
    pages_before_kill = 3
    # Once 3 pages are served, the child's next request waits: it has committed exactly 3 pages.
    sandbox.admin.set_faults(hold_after_pages=pages_before_kill)
    child = CTX.Process(
        target=workers.sync_in_child,
        args=(dataclasses.asdict(credentials), store_url, "customers", "run-killed"),
    )
    child.start()
    sandbox.admin.wait_for_held(1, timeout=120)
    # The child fetches a page ahead of its commits: it commits the pages it was served, then waits.
    wait_for(lambda: sum(r.pages for r in store.get_run_log("run-killed")) == pages_before_kill)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    sandbox.admin.wait_for_held(0, timeout=30)  # the sandbox saw the killed child's request go
    sandbox.admin.set_faults(hold_after_pages=None)
    committed = sum(r.pages for r in store.get_run_log("run-killed"))
    checkpoint = store.get_checkpoint("st_child", "customers")

    assert child.exitcode == -signal.SIGKILL
    assert committed == pages_before_kill < total_pages
    assert checkpoint is not None
    assert checkpoint.continue_from

    workers.sync_in_child(dataclasses.asdict(credentials), store_url, "customers", "run-resumed")
    resumed = store.get_run_log("run-resumed")[0]

    assert resumed.status == "success"
    assert resumed.pages == total_pages - committed
    assert stored(store, credentials.tenant_id, "customers") == truth(sandbox, credentials.tenant_id, "customers")


def test_malformed_records_are_parked_then_recovered(start_sandbox, make_client, store):
    sandbox = start_sandbox(records=200, export_page_size=50)
    client = make_client(credentials_for(sandbox))
    tenant = client.tenant_id
    sandbox.admin.set_faults(malformed_rate=0.1)

    summary = sync_resource(client, store, credential="st", resource="jobs", run_id="run-1")
    letters = store.unresolved_dead_letters("st")

    assert summary.status == "partial"
    assert summary.failed == len(letters) > 0
    assert summary.successful + summary.failed == summary.processed == len(truth(sandbox, tenant, "jobs"))
    assert {letter.error_class for letter in letters} == {"RecordValidationError"}
    assert all(letter.raw and letter.message for letter in letters)

    sandbox.admin.set_faults("none")
    # Fetched again by the number their id names ("123" or "ST-123"); those without one need a person.
    recoverable = [letter for letter in letters if letter.record_number is not None]
    result = recover_dead_letters(client, store, credential="st", run_id="run-1", max_attempts=2)

    assert result.attempted == len(recoverable)
    assert result.recovered == len(recoverable) > 0
    assert result.failed == 0
    assert result.needs_attention == len(letters) - len(recoverable)
    log = store.get_run_log("run-1")[0]
    assert log.records_recovered == len(recoverable)
    assert log.records_processed == log.records_successful + log.records_failed
    expected = truth(sandbox, tenant, "jobs")
    unrecoverable = {letter.raw for letter in store.unresolved_dead_letters("st")}
    assert len(stored(store, tenant, "jobs")) == len(expected) - len(unrecoverable)

    again = recover_dead_letters(client, store, credential="st", run_id="run-2", max_attempts=2)
    assert again.attempted == again.recovered == 0
    assert again.needs_attention == len(letters) - len(recoverable)
    assert recover_dead_letters(client, store, credential="st", run_id="run-3", max_attempts=2).attempted == 0


def test_unlicensed_module_is_skipped_and_recorded(start_sandbox, make_client, store):
    sandbox = start_sandbox()
    tenant = sandbox.credentials[0].tenant_id
    sandbox.admin.set_faults(unlicensed_modules={str(tenant): ["accounting"]})
    client = make_client(credentials_for(sandbox))

    summary = sync_resource(client, store, credential="st", resource="invoices", run_id="run-1")

    assert summary.status == "skipped"
    assert "not licensed" in summary.message
    assert store.get_run_log("run-1")[0].status == "skipped"
    assert store.get_checkpoint("st", "invoices") is None


def test_retries_are_counted_in_the_sync_log(start_sandbox, make_client, store):
    sandbox = start_sandbox(records=60, export_page_size=20)
    sandbox.admin.set_faults(burst_429=2, burst_429_retry_after=1)
    events = SyncEvents()
    client = make_client(credentials_for(sandbox))
    client.retry_policy = client.retry_policy.with_overrides(listener=events.on_retry)

    sync_resource(client, store, credential="st", resource="customers", run_id="run-1", events=events)

    assert store.get_run_log("run-1")[0].retries == 2
