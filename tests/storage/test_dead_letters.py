"""Dead letters: parked once per bad record, resolved or failed by recovery, counted in the run log."""

from __future__ import annotations

import json

import pytest

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.errors import RecordValidationError
from airflow_provider_servicetitan.storage import DeadLetterIn, SyncStore, raw_text
from airflow_provider_servicetitan.sync.records import validate_record
from tests.storage.factories import (
    CREDENTIAL,
    RUN,
    TENANT,
    commit,
    dead_letter,
    record,
    stored_letter,
    stored_record,
)

RECOVERY_RUN = "recovery-run"


def park(store: SyncStore, *letters: DeadLetterIn, resource: str = "customers", tenant_id: int = TENANT) -> None:
    commit(store, [], list(letters), resource=resource, tenant_id=tenant_id)


def only_letter(store: SyncStore) -> int:
    (letter,) = store.unresolved_dead_letters(CREDENTIAL)
    return letter.id


def test_a_parked_record_keeps_everything_needed_to_recover_it(store: SyncStore) -> None:
    raw = {"id": "ST-12", "modifiedOn": "2024-01-01T00:00:00Z", "name": "Zoë"}
    with pytest.raises(RecordValidationError) as caught:
        validate_record(get_resource("customers"), raw)
    park(store, DeadLetterIn.from_error(raw, caught.value, trace_id="trace-1"))
    (letter,) = store.unresolved_dead_letters(CREDENTIAL)
    assert (letter.credential, letter.tenant_id, letter.resource) == (CREDENTIAL, TENANT, "customers")
    assert letter.record_id == "ST-12"
    assert json.loads(letter.raw) == raw
    assert letter.error_class == "RecordValidationError"
    assert "'id' must be an integer" in letter.message
    assert (letter.trace_id, letter.attempts, letter.resolved_at, letter.resolved_run_id) == ("trace-1", 0, None, None)
    assert letter.first_seen == letter.last_seen
    assert letter.first_seen.tzinfo is not None


def test_re_parking_the_same_record_updates_its_one_row(store: SyncStore) -> None:
    park(store, dead_letter("7", raw='{"id": 7, "v": 1}', message="first"))
    first = store.unresolved_dead_letters(CREDENTIAL)[0]
    park(store, dead_letter("7", raw='{"id": 7, "v": 2}', message="second"))
    (again,) = store.unresolved_dead_letters(CREDENTIAL)
    assert again.id == first.id
    assert (again.message, again.raw, again.attempts) == ("second", '{"id": 7, "v": 2}', 0)
    assert again.first_seen == first.first_seen
    assert again.last_seen > first.last_seen


def test_records_without_an_id_are_deduplicated_by_their_raw_payload(store: SyncStore) -> None:
    park(store, dead_letter(None, raw='{"name": "a"}'), dead_letter(None, raw='{"name": "b"}'))
    park(store, dead_letter(None, raw='{"name": "a"}', message="seen again"))
    letters = store.unresolved_dead_letters(CREDENTIAL)
    assert [(letter.raw, letter.message) for letter in letters] == [
        ('{"name": "a"}', "seen again"),
        ('{"name": "b"}', "bad record"),
    ]
    assert all(letter.record_id is None for letter in letters)


def test_the_same_bad_record_twice_in_one_page_is_one_dead_letter(store: SyncStore) -> None:
    park(store, dead_letter("7", message="one"), dead_letter("7", message="two"), dead_letter(None), dead_letter(None))
    assert [(letter.record_id, letter.message) for letter in store.unresolved_dead_letters(CREDENTIAL)] == [
        ("7", "two"),
        (None, "bad record"),
    ]


def test_the_same_id_in_another_tenant_or_resource_is_another_dead_letter(store: SyncStore) -> None:
    park(store, dead_letter("7"))
    park(store, dead_letter("7"), tenant_id=TENANT + 1)
    park(store, dead_letter("7"), resource="jobs")
    letters = store.unresolved_dead_letters(CREDENTIAL)
    assert {(letter.tenant_id, letter.resource) for letter in letters} == {
        (TENANT, "customers"),
        (TENANT + 1, "customers"),
        (TENANT, "jobs"),
    }
    assert [letter.resource for letter in store.unresolved_dead_letters(CREDENTIAL, "jobs")] == ["jobs"]


def test_raw_text_that_postgresql_cannot_hold_is_kept_readable(store: SyncStore) -> None:
    raw = {"id": 7, "name": "bad\x00name", "tag": "\ud800", "balance": float("nan")}
    park(store, DeadLetterIn.from_error(raw, RecordValidationError("bad", record_id=7)))
    (letter,) = store.unresolved_dead_letters(CREDENTIAL)
    assert letter.raw == '{"id": 7, "name": "bad\\u0000name", "tag": "\\ud800", "balance": NaN}'
    assert letter.record_id == "7"


def test_raw_text_is_kept_as_received() -> None:
    assert raw_text('{"id": 7,') == '{"id": 7,'
    assert raw_text(b'{"id": "\xff"}') == '{"id": "\\xff"}'
    assert raw_text([1, "a"]) == '[1, "a"]'


def test_resolve_stores_the_record_and_counts_it_as_recovered(store: SyncStore) -> None:
    park(store, dead_letter("7"))
    letter_id = only_letter(store)
    assert store.resolve_dead_letter(letter_id, record(7, "2024-01-01T00:00:00Z", name="fixed"), run_id=RECOVERY_RUN)

    stored = stored_record(store, 7)
    assert (stored.payload["name"], stored.run_id) == ("fixed", RECOVERY_RUN)
    assert store.unresolved_dead_letters(CREDENTIAL) == []
    resolved = stored_letter(store, letter_id)
    assert resolved.resolved_at is not None
    assert resolved.resolved_run_id == RECOVERY_RUN
    (row,) = store.get_run_log(RECOVERY_RUN)
    assert (row.credential, row.resource, row.records_recovered, row.records_successful) == (
        CREDENTIAL,
        "customers",
        1,
        0,
    )


def test_resolve_counts_into_the_sync_runs_own_row(store: SyncStore) -> None:
    park(store, dead_letter("7"))
    store.resolve_dead_letter(only_letter(store), record(7, "2024-01-01T00:00:00Z"), run_id=RUN)
    (row,) = store.get_run_log(RUN)
    assert (row.pages, row.records_failed, row.records_recovered) == (1, 1, 1)


def test_resolving_twice_counts_once(store: SyncStore) -> None:
    park(store, dead_letter("7"))
    letter_id = only_letter(store)
    assert store.resolve_dead_letter(letter_id, record(7, "2024-01-01T00:00:00Z", name="first"), run_id=RECOVERY_RUN)
    assert not store.resolve_dead_letter(
        letter_id, record(7, "2024-01-02T00:00:00Z", name="second"), run_id=RECOVERY_RUN
    )
    stored = stored_record(store, 7)
    assert stored.payload["name"] == "first"
    assert store.get_run_log(RECOVERY_RUN)[0].records_recovered == 1


def test_resolve_never_overwrites_a_newer_stored_version(store: SyncStore) -> None:
    commit(store, [record(7, "2024-06-01T00:00:00Z", name="newer")])
    park(store, dead_letter("7"))
    store.resolve_dead_letter(only_letter(store), record(7, "2024-01-01T00:00:00Z", name="stale"), run_id=RECOVERY_RUN)
    stored = stored_record(store, 7)
    assert stored.payload["name"] == "newer"


def test_a_record_that_breaks_again_after_resolution_is_parked_anew(store: SyncStore) -> None:
    park(store, dead_letter("7"))
    first_id = only_letter(store)
    store.resolve_dead_letter(first_id, record(7, "2024-01-01T00:00:00Z"), run_id=RECOVERY_RUN)
    park(store, dead_letter("7", message="broken again"))
    (letter,) = store.unresolved_dead_letters(CREDENTIAL)
    assert letter.id != first_id
    assert letter.message == "broken again"


def test_fail_counts_an_attempt_and_keeps_the_latest_error(store: SyncStore) -> None:
    park(store, dead_letter("7"))
    letter_id = only_letter(store)
    before = stored_letter(store, letter_id)
    assert store.fail_dead_letter(letter_id, "NotFoundError", "404 on re-fetch", "trace-2")
    assert store.fail_dead_letter(letter_id, "RecordValidationError", "still malformed")
    after = stored_letter(store, letter_id)
    assert (after.attempts, after.error_class, after.message, after.trace_id) == (
        2,
        "RecordValidationError",
        "still malformed",
        None,
    )
    assert after.last_seen > before.last_seen
    assert after.first_seen == before.first_seen
    assert after.resolved_at is None
    (row,) = store.get_run_log(RUN)
    assert (row.records_failed, row.records_recovered) == (1, 0)


def test_re_parking_does_not_reset_or_add_attempts(store: SyncStore) -> None:
    park(store, dead_letter("7"))
    store.fail_dead_letter(only_letter(store), "E", "m")
    park(store, dead_letter("7"))
    assert store.unresolved_dead_letters(CREDENTIAL)[0].attempts == 1


def test_failing_a_resolved_dead_letter_changes_nothing(store: SyncStore) -> None:
    park(store, dead_letter("7"))
    letter_id = only_letter(store)
    store.resolve_dead_letter(letter_id, record(7, "2024-01-01T00:00:00Z"), run_id=RECOVERY_RUN)
    assert not store.fail_dead_letter(letter_id, "E", "late failure")
    letter = stored_letter(store, letter_id)
    assert (letter.attempts, letter.message) == (0, "bad record")


def test_unknown_dead_letter_id_is_an_error(store: SyncStore) -> None:
    with pytest.raises(KeyError, match="no dead letter with id 999"):
        store.resolve_dead_letter(999, record(7, "2024-01-01T00:00:00Z"), run_id=RECOVERY_RUN)
    with pytest.raises(KeyError, match="no dead letter with id 999"):
        store.fail_dead_letter(999, "E", "m")
    assert store.get_dead_letter(999) is None
    assert store.get_run_log(RECOVERY_RUN) == []


def test_filters_max_attempts_limit_and_credential(store: SyncStore) -> None:
    park(store, dead_letter("1"), dead_letter("2"), dead_letter("3"))
    commit(store, [], [dead_letter("4")], credential="another_credential")
    first, second, third = store.unresolved_dead_letters(CREDENTIAL)
    for _ in range(3):
        store.fail_dead_letter(first.id, "E", "m")
    store.fail_dead_letter(second.id, "E", "m")
    assert [letter.record_id for letter in store.unresolved_dead_letters(CREDENTIAL, max_attempts=3)] == ["2", "3"]
    assert [letter.record_id for letter in store.unresolved_dead_letters(CREDENTIAL, max_attempts=1)] == ["3"]
    assert [letter.record_id for letter in store.unresolved_dead_letters(CREDENTIAL, limit=2)] == ["1", "2"]
    assert [letter.record_id for letter in store.unresolved_dead_letters("another_credential")] == ["4"]
    assert store.unresolved_dead_letters(CREDENTIAL, "jobs") == []
    assert third.attempts == 0


def test_count_of_open_dead_letters_by_attempts(store: SyncStore) -> None:
    park(store, dead_letter("1"), dead_letter("2"), dead_letter("3"))
    commit(store, [], [dead_letter("4")], credential="another_credential")
    first, second, third = store.unresolved_dead_letters(CREDENTIAL)
    for _ in range(3):
        store.fail_dead_letter(first.id, "E", "m")
    store.resolve_dead_letter(third.id, record(3, "2024-01-01T00:00:00Z"), run_id=RUN)

    assert store.count_unresolved_dead_letters(CREDENTIAL) == 2
    assert store.count_unresolved_dead_letters(CREDENTIAL, min_attempts=3) == 1
    assert store.count_unresolved_dead_letters("another_credential") == 1
    assert second.attempts == 0
