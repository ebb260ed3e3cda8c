"""Schema version 2: a version-1 warehouse upgrades in place, and what the new columns do.

Version 2 adds run owners and heartbeats (``interrupted`` runs), the run that restarted a
checkpoint (re-exports), and the number a dead letter can be fetched again by.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect, text

from airflow_provider_servicetitan.storage import INTERRUPTED, RECOVERED, RunOwner, SyncStore
from tests.storage.factories import CREDENTIAL, RUN, TENANT, commit, dead_letter, record, saved_checkpoint

ADDED_IN_VERSION_2 = {
    "servicetitan_sync_state": ("reexport_run_id",),
    "servicetitan_sync_log": ("owner_host", "owner_scope", "owner_pid", "heartbeat_at", "interrupted_by"),
    "servicetitan_dead_letters": ("record_number",),
}
INDEXES_ADDED_IN_VERSION_2 = ("ix_servicetitan_sync_log_status", "ix_servicetitan_sync_log_interrupted_by")
OWNER = RunOwner(host="worker-a", scope="scope-a", pid=4242)
PARKED_AT = datetime(2024, 3, 1, tzinfo=UTC)


def columns(store: SyncStore, table: str) -> dict[str, bool]:
    return {column["name"]: column["nullable"] for column in inspect(store.engine).get_columns(table)}


def indexes(store: SyncStore, table: str) -> dict[str, list[str | None]]:
    """Index name (without the table prefix) -> columns."""
    found = inspect(store.engine).get_indexes(f"{store.table_prefix}_{table}")
    return {index["name"].replace(store.table_prefix, "<prefix>"): index["column_names"] for index in found}


def make_version_1(store: SyncStore) -> None:
    """Turn ``store``'s fresh tables into what version 1 created, holding version-1 data.

    Version 1's tables are version 2's without the added columns; the rows are written with those
    columns only, as version 1 wrote them.
    """
    tables = store.tables
    with store.engine.begin() as conn:
        for index in INDEXES_ADDED_IN_VERSION_2:
            conn.execute(text(f"DROP INDEX {index}"))
        for table, names in ADDED_IN_VERSION_2.items():
            for name in names:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {name}"))
        conn.execute(text("UPDATE servicetitan_schema_version SET version = 1"))
        for record_id in ("ST-5", "7", None, "abc"):
            conn.execute(
                tables.dead_letters.insert().values(
                    credential=CREDENTIAL,
                    tenant_id=TENANT,
                    resource="customers",
                    record_id=record_id,
                    dedupe_key=f"key-{record_id}",
                    raw=f'{{"id": "{record_id}"}}',
                    error_class="RecordValidationError",
                    message="bad",
                    attempts=0,
                    first_seen=PARKED_AT,
                    last_seen=PARKED_AT,
                )
            )
        conn.execute(
            tables.sync_log.insert().values(
                run_id=RUN, credential=CREDENTIAL, resource="customers", status="running", started_at=PARKED_AT
            )
        )
        conn.execute(
            tables.sync_state.insert().values(
                credential=CREDENTIAL,
                resource="customers",
                tenant_id=TENANT,
                continue_from="tok-9",
                updated_at=PARKED_AT,
            )
        )


@pytest.fixture
def version_1_store(store: SyncStore) -> SyncStore:
    make_version_1(store)
    assert store.schema_version() == 1
    return store


def test_a_version_1_store_is_upgraded_in_place_and_keeps_its_data(version_1_store: SyncStore, store_url: str) -> None:
    store = version_1_store

    store.create_tables()

    assert store.schema_version() == 2
    with SyncStore(store_url, table_prefix="fresh") as fresh:
        fresh.create_tables()
        for table in ADDED_IN_VERSION_2:
            assert columns(store, table) == columns(fresh, table.replace("servicetitan", "fresh"))
        assert indexes(store, "sync_log") == indexes(fresh, "sync_log")
        assert len(indexes(store, "sync_log")) == len(INDEXES_ADDED_IN_VERSION_2)
    letters = {letter.record_id: letter for letter in store.unresolved_dead_letters(CREDENTIAL)}
    assert {record_id: letter.record_number for record_id, letter in letters.items()} == {
        "ST-5": 5,
        "7": 7,
        None: None,
        "abc": None,
    }
    # Parked before the upgrade without a usable id: they need a person from now on, not after 3 attempts.
    assert store.count_dead_letters_needing_attention(CREDENTIAL, max_attempts=3) == 2
    (running,) = store.get_run_log(RUN)
    assert (running.status, running.owner_pid, running.heartbeat_at, running.interrupted_by) == (
        "running",
        None,
        None,
        None,
    )
    checkpoint = saved_checkpoint(store)
    assert (checkpoint.continue_from, checkpoint.reexport_run_id) == ("tok-9", None)

    store.create_tables()
    assert store.schema_version() == 2


def test_many_workers_upgrade_a_version_1_store_at_once(version_1_store: SyncStore, store_url: str) -> None:
    workers = 6
    barrier = threading.Barrier(workers)
    stores = [SyncStore(store_url) for _ in range(workers)]

    def upgrade(worker_store: SyncStore) -> None:
        barrier.wait(timeout=10)
        worker_store.create_tables()

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(upgrade, worker_store) for worker_store in stores]:
                future.result(timeout=60)
    finally:
        for worker_store in stores:
            worker_store.close()
    assert version_1_store.schema_version() == 2
    assert {letter.record_number for letter in version_1_store.unresolved_dead_letters(CREDENTIAL)} == {5, 7, None}


def test_letters_whose_id_names_no_record_need_a_person_from_the_start(store: SyncStore) -> None:
    commit(store, [], [dead_letter(record_id, raw=f"raw-{record_id}") for record_id in ("ST-5", "7", None, "x", "0")])

    fetchable = store.unresolved_dead_letters(CREDENTIAL, fetchable=True)
    unfetchable = store.unresolved_dead_letters(CREDENTIAL, fetchable=False)

    assert [(letter.record_id, letter.record_number) for letter in fetchable] == [("ST-5", 5), ("7", 7)]
    assert [(letter.record_id, letter.record_number) for letter in unfetchable] == [
        (None, None),
        ("x", None),
        ("0", None),
    ]
    assert store.count_dead_letters_needing_attention(CREDENTIAL, max_attempts=3) == 3
    for _ in range(3):
        store.fail_dead_letter(fetchable[1].id, "NotFoundError", "gone")
    assert store.count_dead_letters_needing_attention(CREDENTIAL, max_attempts=3) == 4
    assert store.count_dead_letters_needing_attention("another_credential", max_attempts=3) == 0


def test_unfetchable_letters_never_crowd_out_the_fetchable_ones(store: SyncStore) -> None:
    commit(store, [], [dead_letter(None, raw=f"no id {index}") for index in range(5)])
    commit(store, [], [dead_letter("ST-9")])

    (letter,) = store.unresolved_dead_letters(CREDENTIAL, fetchable=True, limit=2)

    assert letter.record_number == 9


def test_a_restarted_checkpoint_replaces_the_old_one_even_when_it_is_behind(store: SyncStore) -> None:
    commit(store, [record(1, "2024-06-01T00:00:00Z")], continue_from="tok-9", run_id="scheduled")
    commit(store, [record(2, "2023-01-01T00:00:00Z")], continue_from="tok-1", run_id=RUN, restart_checkpoint=True)

    restarted = saved_checkpoint(store)
    assert (restarted.continue_from, restarted.reexport_run_id) == ("tok-1", RUN)
    assert restarted.last_modified_on == datetime(2023, 1, 1, tzinfo=UTC)

    commit(store, [record(3, "2023-02-01T00:00:00Z")], continue_from="tok-2", run_id=RUN)
    moved_on = saved_checkpoint(store)
    assert (moved_on.continue_from, moved_on.reexport_run_id) == ("tok-2", RUN)
    assert moved_on.last_modified_on == datetime(2023, 2, 1, tzinfo=UTC)


def test_start_records_the_owner_and_every_page_is_a_heartbeat(store: SyncStore) -> None:
    store.start_run(RUN, CREDENTIAL, "customers", OWNER)
    (started,) = store.get_run_log(RUN)
    commit(store, [record(1, "2024-01-01T00:00:00Z")])
    (after_page,) = store.get_run_log(RUN)

    assert (started.owner_host, started.owner_scope, started.owner_pid) == ("worker-a", "scope-a", 4242)
    assert started.heartbeat_at is not None
    assert after_page.heartbeat_at is not None
    assert after_page.heartbeat_at > started.heartbeat_at


def test_closing_a_run_is_refused_once_it_showed_a_sign_of_life(store: SyncStore) -> None:
    store.start_run(RUN, CREDENTIAL, "customers", OWNER)
    (seen_before_a_page,) = store.running_runs(CREDENTIAL, "customers")
    commit(store, [record(1, "2024-01-01T00:00:00Z")])

    assert not store.mark_interrupted(seen_before_a_page, by_run_id="next-run", message="interrupted: gone")
    assert store.get_run_log(RUN)[0].status == "running"

    (seen,) = store.running_runs(CREDENTIAL, "customers")
    store.start_run(RUN, CREDENTIAL, "customers", RunOwner(host="worker-b", scope="scope-b", pid=os.getpid()))
    assert not store.mark_interrupted(seen, by_run_id="next-run", message="interrupted: gone")

    (seen,) = store.running_runs(CREDENTIAL, "customers")
    assert store.mark_interrupted(seen, by_run_id="next-run", message="interrupted: its process is gone")
    assert not store.mark_interrupted(seen, by_run_id="next-run", message="again")
    (closed,) = store.get_run_log(RUN)
    assert (closed.status, closed.interrupted_by, closed.message) == (
        INTERRUPTED,
        "next-run",
        "interrupted: its process is gone",
    )
    assert closed.finished_at is not None
    assert store.running_runs(CREDENTIAL, "customers") == []
    assert store.interrupted_runs(CREDENTIAL, by_run_id="next-run") == [closed]
    assert store.interrupted_runs(CREDENTIAL, by_run_id="another-run") == []


def test_a_run_taken_for_dead_that_finishes_or_restarts_is_not_interrupted_any_more(store: SyncStore) -> None:
    for end in ("finish", "restart"):
        run_id = f"run-{end}"
        store.start_run(run_id, CREDENTIAL, "customers", OWNER)
        (seen,) = store.running_runs(CREDENTIAL, "customers")
        assert store.mark_interrupted(seen, by_run_id="next-run", message="interrupted: no sign of life")

        if end == "finish":
            store.finish_run(run_id, CREDENTIAL, "customers", "success")
        else:
            store.start_run(run_id, CREDENTIAL, "customers", OWNER)

        (row,) = store.get_run_log(run_id)
        assert (row.status, row.interrupted_by) == ("success" if end == "finish" else "running", None)
        if end == "restart":
            store.finish_run(run_id, CREDENTIAL, "customers", "success")
    assert store.interrupted_runs(CREDENTIAL, by_run_id="next-run") == []


def test_a_run_that_only_recovered_records_is_not_left_running(store: SyncStore) -> None:
    commit(store, [], [dead_letter("7")], run_id="sync-run")
    (letter,) = store.unresolved_dead_letters(CREDENTIAL)

    store.resolve_dead_letter(letter.id, record(7, "2024-01-01T00:00:00Z"), run_id="recovery-run")

    (row,) = store.get_run_log("recovery-run")
    assert (row.status, row.records_recovered) == (RECOVERED, 1)
    assert row.finished_at is not None
    assert [row.run_id for row in store.running_runs(CREDENTIAL, "customers")] == ["sync-run"]
