"""Every parked record is reachable: ``ST-<digits>`` ids are recovered by their number, records
without a usable id need a person at once, and a re-export brings back what no id can fetch.

Runs against the sandbox's malformed-record fault (seeded: the same records break the same way on
every run) and a real SQLite or PostgreSQL store.
"""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.errors import RecordValidationError
from airflow_provider_servicetitan.storage import DeadLetter, SyncStore
from airflow_provider_servicetitan.storage.records import MAX_RECORD_ID, record_number
from airflow_provider_servicetitan.sync.engine import sync_resource
from airflow_provider_servicetitan.sync.records import validate_record
from airflow_provider_servicetitan.sync.recovery import recover_dead_letters
from airflow_provider_servicetitan.sync.reexport import Reexport
from tests.helpers import credentials_for

CREDENTIAL = "st"
RESOURCE = "jobs"
MAX_ATTEMPTS = 3


@pytest.mark.parametrize(
    ("raw_id", "number"),
    [
        (42, 42),
        (MAX_RECORD_ID, MAX_RECORD_ID),
        ("42", 42),
        ("ST-71228018", 71228018),
        (" ST-7 ", 7),
        (None, None),
        (True, None),
        (42.0, None),
        ([42], None),
        (0, None),
        (-3, None),
        (MAX_RECORD_ID + 1, None),
        (str(MAX_RECORD_ID + 1), None),
        ("ST-0", None),
        ("ST-", None),
        ("st-7", None),
        ("ST-7x", None),
        ("XY-7", None),
        ("\u0663\u0664", None),  # Arabic-Indic digits: int() reads them, ServiceTitan never sends them
        ("", None),
    ],
)
def test_record_number_is_the_one_reading_of_record_ids(raw_id: object, number: int | None) -> None:
    assert record_number(raw_id) == number


@pytest.mark.parametrize(
    ("raw_id", "says"),
    [
        ("ST-12", "it names record 12, which recovery fetches again"),
        ("12", "it names record 12, which recovery fetches again"),
        (None, "it names no record, so it cannot be fetched again and needs a person"),
        ("abc", "it names no record, so it cannot be fetched again and needs a person"),
        (0, "it names no record, so it cannot be fetched again and needs a person"),
    ],
)
def test_a_rejected_id_says_whether_recovery_can_fetch_it(raw_id: object, says: str) -> None:
    with pytest.raises(RecordValidationError, match=says):
        validate_record(get_resource(RESOURCE), {"id": raw_id, "modifiedOn": "2024-01-01T00:00:00Z"})


def truth(sandbox, tenant_id: int) -> dict[int, str]:
    return {row["id"]: row["modifiedOn"] for row in sandbox.admin.truth(tenant_id, RESOURCE)}


def stored(store: SyncStore, tenant_id: int) -> dict[int, str]:
    return {
        record_id: store.get_record(tenant_id, RESOURCE, record_id).payload["modifiedOn"]
        for record_id in store.record_ids(tenant_id, RESOURCE)
    }


def by_breakage(letters: list[DeadLetter]) -> dict[str, list[DeadLetter]]:
    """The sandbox breaks a record three ways: no id, an ``ST-`` id, or an unreadable ``modifiedOn``."""
    kinds: dict[str, list[DeadLetter]] = {"no id": [], "ST- id": [], "bad date": []}
    for letter in letters:
        if letter.record_id is None:
            kinds["no id"].append(letter)
        elif letter.record_id.startswith("ST-"):
            kinds["ST- id"].append(letter)
        else:
            kinds["bad date"].append(letter)
    return kinds


def test_the_list_endpoint_finds_a_record_by_the_number_of_its_st_id(start_sandbox, make_client):
    sandbox = start_sandbox(records=60, export_page_size=60)
    client = make_client(credentials_for(sandbox))
    sandbox.admin.set_faults(malformed_rate=1.0)
    (page,) = client.export(RESOURCE)
    st_id = next(raw["id"] for raw in page.data if str(raw.get("id", "")).startswith("ST-"))
    number = record_number(st_id)

    still_broken = client.get_by_ids(RESOURCE, [number])
    sandbox.admin.set_faults(malformed_rate=0.0)
    repaired = client.get_by_ids(RESOURCE, [number])

    assert [raw["id"] for raw in still_broken] == [st_id]
    assert [raw["id"] for raw in repaired] == [number]


def test_st_ids_are_recovered_by_number_and_records_without_an_id_need_a_person_at_once(
    start_sandbox, make_client, store
):
    sandbox = start_sandbox(records=200, export_page_size=50)
    client = make_client(credentials_for(sandbox))
    tenant = client.tenant_id
    sandbox.admin.set_faults(malformed_rate=0.1)

    summary = sync_resource(client, store, credential=CREDENTIAL, resource=RESOURCE, run_id="run-1")

    letters = store.unresolved_dead_letters(CREDENTIAL)
    kinds = by_breakage(letters)
    assert summary.failed == len(letters)
    assert all(kinds.values()), f"the seeded faults break records all three ways: {kinds}"
    assert {letter.record_number for letter in kinds["ST- id"]} == {
        int(letter.record_id.removeprefix("ST-")) for letter in kinds["ST- id"]
    }
    # No recovery attempt needed: a record without an id can never be fetched, it needs a person now.
    assert store.count_dead_letters_needing_attention(CREDENTIAL, max_attempts=MAX_ATTEMPTS) == len(kinds["no id"])
    fetchable = kinds["ST- id"] + kinds["bad date"]

    # While the records are still broken upstream, each is found by its number and fails validation again.
    still_broken = recover_dead_letters(
        client, store, credential=CREDENTIAL, run_id="recovery-1", max_attempts=MAX_ATTEMPTS
    )

    assert (still_broken.attempted, still_broken.recovered, still_broken.failed) == (len(fetchable), 0, len(fetchable))
    assert still_broken.needs_attention == len(kinds["no id"])
    for letter in kinds["ST- id"]:
        again = store.get_dead_letter(letter.id)
        assert (again.attempts, again.error_class) == (1, "RecordValidationError")
        assert f"it names record {letter.record_number}" in again.message
    assert all(store.get_dead_letter(letter.id).attempts == 0 for letter in kinds["no id"])

    sandbox.admin.set_faults(malformed_rate=0.0)
    repaired = recover_dead_letters(
        client, store, credential=CREDENTIAL, run_id="recovery-2", max_attempts=MAX_ATTEMPTS
    )

    assert (repaired.attempted, repaired.recovered, repaired.failed) == (len(fetchable), len(fetchable), 0)
    assert repaired.needs_attention == len(kinds["no id"])
    assert {letter.id for letter in store.unresolved_dead_letters(CREDENTIAL)} == {
        letter.id for letter in kinds["no id"]
    }
    expected = truth(sandbox, tenant)
    assert {letter.record_number: expected[letter.record_number] for letter in kinds["ST- id"]}.items() <= stored(
        store, tenant
    ).items()
    assert len(stored(store, tenant)) == len(expected) - len(kinds["no id"])

    # What no id can fetch, a person brings back with a re-export: idempotent, nothing doubled.
    reexported = sync_resource(
        client, store, credential=CREDENTIAL, resource=RESOURCE, run_id="reexport", reexport=Reexport(since=None)
    )

    assert reexported.processed == reexported.successful == len(expected)
    assert stored(store, tenant) == expected
    assert store.count_records(tenant, RESOURCE) == len(expected)
