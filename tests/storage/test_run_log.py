"""The sync log: one row per (run, credential, resource), updated in place when a task runs again."""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.storage import SyncStore
from tests.storage.factories import CREDENTIAL, RUN, commit, dead_letter, record


def test_start_and_finish(store: SyncStore) -> None:
    store.start_run(RUN, CREDENTIAL, "customers")
    (started,) = store.get_run_log(RUN)
    assert (started.status, started.pages, started.finished_at, started.message) == ("running", 0, None, None)
    commit(store, [record(1, "2024-01-01T00:00:00Z")], [dead_letter("x")])
    store.finish_run(RUN, CREDENTIAL, "customers", "partial", "1 record parked", retries=3, breaker_events=1)
    (row,) = store.get_run_log(RUN)
    assert (row.status, row.message, row.retries, row.breaker_events) == ("partial", "1 record parked", 3, 1)
    assert (row.pages, row.records_processed, row.records_successful, row.records_failed) == (1, 2, 1, 1)
    assert row.started_at == started.started_at
    assert row.finished_at is not None
    assert row.finished_at >= row.started_at


def test_a_re_run_updates_its_row_and_keeps_the_committed_counts(store: SyncStore) -> None:
    store.start_run(RUN, CREDENTIAL, "customers")
    commit(store, [record(1, "2024-01-01T00:00:00Z")])
    store.finish_run(RUN, CREDENTIAL, "customers", "failed", "gave up after 3 attempts", retries=2)

    store.start_run(RUN, CREDENTIAL, "customers")
    (rerun,) = store.get_run_log(RUN)
    assert (rerun.status, rerun.finished_at, rerun.message) == ("running", None, None)
    assert rerun.records_successful == 1

    commit(store, [record(2, "2024-01-02T00:00:00Z")])
    store.finish_run(RUN, CREDENTIAL, "customers", "success", retries=1)
    (row,) = store.get_run_log(RUN)
    assert (row.status, row.message, row.pages, row.records_successful, row.retries) == ("success", None, 2, 2, 3)


def test_finish_without_start_creates_the_row(store: SyncStore) -> None:
    store.finish_run(RUN, CREDENTIAL, "jobs", "skipped", "403: module not licensed")
    (row,) = store.get_run_log(RUN)
    assert (row.resource, row.status, row.message, row.pages) == ("jobs", "skipped", "403: module not licensed", 0)


def test_rows_are_per_run_credential_and_resource(store: SyncStore) -> None:
    for credential in ("b_credential", "a_credential"):
        for resource in ("jobs", "customers"):
            store.start_run(RUN, credential, resource)
    store.start_run("another-run", "a_credential", "customers")
    assert [(row.credential, row.resource) for row in store.get_run_log(RUN)] == [
        ("a_credential", "customers"),
        ("a_credential", "jobs"),
        ("b_credential", "customers"),
        ("b_credential", "jobs"),
    ]
    assert len(store.get_run_log("another-run")) == 1
    assert store.get_run_log("unknown-run") == []


def test_invalid_status_and_resource_are_refused(store: SyncStore) -> None:
    with pytest.raises(ValueError, match="run status must be one of"):
        store.finish_run(RUN, CREDENTIAL, "customers", "done")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="widgets"):
        store.start_run(RUN, CREDENTIAL, "widgets")
    assert store.get_run_log(RUN) == []
