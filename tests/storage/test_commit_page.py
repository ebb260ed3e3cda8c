"""commit_page: records, dead letters, checkpoint and counts commit together or not at all."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from airflow_provider_servicetitan.storage import DeadLetterIn, SyncStore
from tests.storage.factories import (
    CREDENTIAL,
    RUN,
    TENANT,
    commit,
    dead_letter,
    record,
    saved_checkpoint,
)


def test_checkpoint_is_saved_with_the_page(store: SyncStore) -> None:
    assert store.get_checkpoint(CREDENTIAL, "customers") is None
    commit(store, [record(1, "2024-01-02T00:00:00Z"), record(2, "2024-01-01T00:00:00Z")], continue_from="tok-1")
    checkpoint = saved_checkpoint(store)
    assert (checkpoint.continue_from, checkpoint.tenant_id) == ("tok-1", TENANT)
    assert checkpoint.last_modified_on == datetime(2024, 1, 2, tzinfo=UTC)
    assert store.get_checkpoint(CREDENTIAL, "jobs") is None
    assert store.get_checkpoint("another_credential", "customers") is None


def test_checkpoint_moves_forward_page_by_page(store: SyncStore) -> None:
    commit(store, [record(1, "2024-01-05T00:00:00Z")], continue_from="tok-1")
    first = saved_checkpoint(store)
    commit(store, [record(2, "2024-01-03T00:00:00Z")], continue_from="tok-2")
    second = saved_checkpoint(store)
    assert second.continue_from == "tok-2"
    # An older page does not move the newest modifiedOn seen backwards.
    assert second.last_modified_on == datetime(2024, 1, 5, tzinfo=UTC)
    assert second.updated_at > first.updated_at
    commit(store, [record(3, "2024-01-09T00:00:00Z")], continue_from="tok-3")
    third = saved_checkpoint(store)
    assert third.last_modified_on == datetime(2024, 1, 9, tzinfo=UTC)


def test_empty_page_keeps_the_newest_modified_on_and_no_token_keeps_the_last_token(store: SyncStore) -> None:
    commit(store, [], continue_from="tok-1")
    empty = saved_checkpoint(store)
    assert (empty.continue_from, empty.last_modified_on) == ("tok-1", None)
    commit(store, [record(1, "2024-01-05T00:00:00Z")], continue_from="tok-2")
    commit(store, [], continue_from=None)
    checkpoint = saved_checkpoint(store)
    assert (checkpoint.continue_from, checkpoint.last_modified_on) == ("tok-2", datetime(2024, 1, 5, tzinfo=UTC))


def test_page_counts_are_added_to_the_run_log(store: SyncStore) -> None:
    commit(store, [record(1, "2024-01-01T00:00:00Z"), record(2, "2024-01-01T00:00:00Z")], [dead_letter("x")])
    commit(store, [record(3, "2024-01-01T00:00:00Z")], [])
    (row,) = store.get_run_log(RUN)
    assert (row.pages, row.records_processed, row.records_successful, row.records_failed) == (2, 4, 3, 1)
    assert (row.records_recovered, row.status) == (0, "running")


def _state(store: SyncStore) -> tuple[Any, ...]:
    checkpoint = store.get_checkpoint(CREDENTIAL, "customers")
    return (
        store.record_ids(TENANT, "customers"),
        store.get_record(TENANT, "customers", 1),
        checkpoint and (checkpoint.continue_from, checkpoint.last_modified_on),
        store.get_run_log(RUN),
        store.unresolved_dead_letters(CREDENTIAL),
    )


def test_a_failure_after_the_records_are_written_rolls_back_the_whole_page(store: SyncStore) -> None:
    commit(store, [record(1, "2024-01-01T00:00:00Z", name="before")], [dead_letter("9")], continue_from="tok-1")
    before = _state(store)

    # The records and the first dead letter are written before the database refuses the second
    # dead letter (NOT NULL violation): a real failure in the middle of the transaction.
    unwritable = DeadLetterIn(record_id="8", raw="{}", error_class="RecordValidationError", message=None)  # type: ignore[arg-type]
    with pytest.raises(DBAPIError):
        commit(
            store,
            [record(1, "2024-02-01T00:00:00Z", name="after"), record(2, "2024-02-01T00:00:00Z")],
            [dead_letter("7"), unwritable],
            continue_from="tok-2",
        )

    assert _state(store) == before
    checkpoint = saved_checkpoint(store)
    assert checkpoint.continue_from == "tok-1"


def test_a_failure_on_the_first_page_leaves_nothing_behind(store: SyncStore) -> None:
    with pytest.raises(DBAPIError):
        commit(
            store,
            [record(1, "2024-01-01T00:00:00Z")],
            [DeadLetterIn(record_id=None, raw=None, error_class="E", message="m")],  # type: ignore[arg-type]
        )
    assert store.get_checkpoint(CREDENTIAL, "customers") is None
    assert store.record_ids(TENANT, "customers") == []
    assert store.get_run_log(RUN) == []


def test_a_failure_while_saving_the_checkpoint_rolls_back_the_records(store: SyncStore) -> None:
    """Make the database itself refuse the checkpoint row, after records and dead letters are in."""
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE servicetitan_sync_state RENAME TO servicetitan_sync_state_away"))
    try:
        with pytest.raises(DBAPIError, match="servicetitan_sync_state"):
            commit(store, [record(1, "2024-01-01T00:00:00Z")], [dead_letter("7")], continue_from="tok-1")
    finally:
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE servicetitan_sync_state_away RENAME TO servicetitan_sync_state"))
    assert store.record_ids(TENANT, "customers") == []
    assert store.unresolved_dead_letters(CREDENTIAL) == []
    assert store.get_checkpoint(CREDENTIAL, "customers") is None
    assert store.get_run_log(RUN) == []


def test_the_store_keeps_working_after_a_failed_page(store: SyncStore) -> None:
    with pytest.raises(DBAPIError):
        commit(store, [record(1, "2024-01-01T00:00:00Z")], [DeadLetterIn("8", "{}", "E", None)])  # type: ignore[arg-type]
    commit(store, [record(1, "2024-01-01T00:00:00Z")], [dead_letter("8")], continue_from="tok-1")
    checkpoint = saved_checkpoint(store)
    assert checkpoint.continue_from == "tok-1"
    assert store.record_ids(TENANT, "customers") == [1]
    (row,) = store.get_run_log(RUN)
    assert (row.pages, row.records_successful, row.records_failed) == (1, 1, 1)


def test_unknown_resource_writes_nothing(store: SyncStore) -> None:
    with pytest.raises(KeyError):
        commit(store, [record(1, "2024-01-01T00:00:00Z")], resource="widgets")
    assert store.get_checkpoint(CREDENTIAL, "widgets") is None
