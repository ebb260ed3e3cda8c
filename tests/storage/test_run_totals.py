"""A run's totals per credential: the sync log summed, resource statuses, dead letters, interruptions."""

from __future__ import annotations

from dataclasses import fields

from airflow_provider_servicetitan.storage import RUN_COUNTERS, RunCounts, RunLog, RunOwner, SyncStore
from tests.storage.factories import CREDENTIAL, RUN, TENANT, commit, dead_letter, record

MAX_ATTEMPTS = 3
OTHER = "servicetitan_other"
OWNER = RunOwner(host="worker-a", scope="scope-a", pid=4242)


def _interrupt(store: SyncStore, run_id: str, resource: str, *, by_run_id: str) -> None:
    store.start_run(run_id, CREDENTIAL, resource, OWNER)
    (seen,) = store.running_runs(CREDENTIAL, resource)
    assert store.mark_interrupted(seen, by_run_id=by_run_id, message=f"interrupted: found by {by_run_id}")


def _sync_with_bad_records_and_recover_one(store: SyncStore) -> None:
    """Two pages of customers (3 good, 3 bad), jobs skipped, one letter recovered, one given up on."""
    store.start_run(RUN, CREDENTIAL, "customers")
    commit(
        store,
        [record(1, "2024-01-01T00:00:00Z"), record(2, "2024-01-02T00:00:00Z")],
        [dead_letter("7"), dead_letter(None, raw="no id at all")],
    )
    commit(store, [record(3, "2024-01-03T00:00:00Z")], [dead_letter("8", raw='{"id": 8}')], continue_from="token-2")
    store.finish_run(RUN, CREDENTIAL, "customers", "partial", "3 records parked", retries=2, breaker_events=1)
    store.finish_run(RUN, CREDENTIAL, "jobs", "skipped", "403: module not licensed")
    letters = {letter.record_id: letter for letter in store.unresolved_dead_letters(CREDENTIAL)}
    assert store.resolve_dead_letter(letters["7"].id, record(7, "2024-01-04T00:00:00Z"), run_id=RUN)
    for _ in range(MAX_ATTEMPTS):
        assert store.fail_dead_letter(letters["8"].id, "NotFoundError", "still gone")


def test_totals_sum_the_runs_rows_per_credential(store: SyncStore) -> None:
    _interrupt(store, "scheduled__earlier", "customers", by_run_id=RUN)
    _interrupt(store, "scheduled__older", "jobs", by_run_id="another-run")
    _sync_with_bad_records_and_recover_one(store)
    store.set_credential_status(CREDENTIAL, "degraded", "jobs: 403")
    commit(store, [record(9, "2024-02-01T00:00:00Z")], run_id="another-run")
    store.start_run(RUN, OTHER, "customers")
    commit(store, [record(1, "2024-01-01T00:00:00Z")], credential=OTHER, tenant_id=TENANT + 1)

    totals = store.run_totals(RUN, max_recovery_attempts=MAX_ATTEMPTS)

    assert list(totals) == [CREDENTIAL, OTHER]  # sorted
    mine = totals[CREDENTIAL]
    assert mine.credential == CREDENTIAL
    assert mine.counts == RunCounts(
        pages=2,
        records_processed=6,
        records_successful=3,
        records_failed=3,
        records_recovered=1,
        retries=2,
        breaker_events=1,
    )
    assert mine.resources == {"customers": "partial", "jobs": "skipped"}
    assert mine.credential_status == "degraded"
    assert (mine.open_dead_letters, mine.needs_attention) == (2, 2)
    assert [(row.run_id, row.resource, row.status, row.message) for row in mine.interrupted] == [
        ("scheduled__earlier", "customers", "interrupted", f"interrupted: found by {RUN}")
    ]
    other = totals[OTHER]
    assert other.counts == RunCounts(pages=1, records_processed=1, records_successful=1)
    assert other.resources == {"customers": "running"}
    assert other.credential_status is None
    assert (other.open_dead_letters, other.needs_attention, other.interrupted) == (0, 0, ())


def test_needs_attention_follows_the_recovery_attempts_given(store: SyncStore) -> None:
    _sync_with_bad_records_and_recover_one(store)
    assert store.run_totals(RUN, max_recovery_attempts=MAX_ATTEMPTS)[CREDENTIAL].needs_attention == 2
    # One more attempt allowed: the letter that failed MAX_ATTEMPTS times may still recover.
    assert store.run_totals(RUN, max_recovery_attempts=MAX_ATTEMPTS + 1)[CREDENTIAL].needs_attention == 1


def test_named_credentials_come_in_their_order_even_without_rows(store: SyncStore) -> None:
    commit(store, [record(1, "2024-01-01T00:00:00Z")], [dead_letter(None, raw="no id")], run_id="earlier-run")
    store.set_credential_status(CREDENTIAL, "needs_attention", "client secret rejected")
    store.start_run(RUN, OTHER, "customers")

    totals = store.run_totals(RUN, max_recovery_attempts=MAX_ATTEMPTS, credentials=[OTHER, CREDENTIAL])

    assert list(totals) == [OTHER, CREDENTIAL]
    skipped = totals[CREDENTIAL]
    assert (skipped.counts, skipped.resources) == (RunCounts(), {})
    assert skipped.credential_status == "needs_attention"
    assert (skipped.open_dead_letters, skipped.needs_attention) == (1, 1)
    assert store.run_totals("unknown-run", max_recovery_attempts=MAX_ATTEMPTS) == {}


def test_the_counters_are_the_log_tables_and_the_log_rows(store: SyncStore) -> None:
    """One definition: the table's columns and ``RunLog``'s fields come from ``RunCounts``."""
    # The column names are the database's contract: a renamed field must fail here, not migrate silently.
    assert RUN_COUNTERS == (
        "pages",
        "records_processed",
        "records_successful",
        "records_failed",
        "records_recovered",
        "retries",
        "breaker_events",
    )
    assert set(RUN_COUNTERS) <= {column.name for column in store.tables.sync_log.columns}
    assert set(RUN_COUNTERS) <= {field.name for field in fields(RunLog)}
    store.finish_run(RUN, CREDENTIAL, "customers", "failed", retries=4, breaker_events=2)
    (row,) = store.get_run_log(RUN)
    assert row.counters() == RunCounts(retries=4, breaker_events=2).counters()
    assert RunCounts.total([row, row]) == RunCounts(retries=8, breaker_events=4)
