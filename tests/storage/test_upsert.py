"""Record upserts: idempotent, and an older modifiedOn never overwrites a newer one."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import StatementError

from airflow_provider_servicetitan.storage import SyncStore
from airflow_provider_servicetitan.storage.records import ValidRecord
from tests.storage.factories import RUN, TENANT, commit, record, stored_record


def test_insert_then_read_back(store: SyncStore) -> None:
    before = datetime.now(UTC)
    commit(store, [record(5, "2024-03-01T12:00:00.1234567Z", name="Ada", active=False, deleted=True)])
    after = datetime.now(UTC)
    stored = stored_record(store, 5)
    assert stored.modified_on == datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert stored.modified_on.tzinfo is UTC
    assert (stored.active, stored.deleted, stored.run_id) == (False, True, RUN)
    assert stored.payload == {
        "id": 5,
        "modifiedOn": "2024-03-01T12:00:00.1234567Z",
        "name": "Ada",
        "active": False,
        "deleted": True,
    }
    assert stored.synced_at.tzinfo is UTC
    assert before <= stored.synced_at <= after


def test_newer_version_replaces_the_stored_one(store: SyncStore) -> None:
    commit(store, [record(5, "2024-01-01T00:00:00Z", name="old")])
    commit(store, [record(5, "2024-01-02T00:00:00Z", name="new")], run_id="run-2")
    stored = stored_record(store, 5)
    assert (stored.payload["name"], stored.run_id) == ("new", "run-2")
    assert store.count_records(TENANT, "customers") == 1


def test_older_version_never_overwrites_a_newer_one(store: SyncStore) -> None:
    commit(store, [record(5, "2024-01-02T00:00:00Z", name="new")])
    commit(store, [record(5, "2024-01-01T00:00:00Z", name="old")], run_id="run-2")
    stored = stored_record(store, 5)
    assert (stored.payload["name"], stored.run_id) == ("new", RUN)
    assert stored.modified_on == datetime(2024, 1, 2, tzinfo=UTC)


def test_same_modified_on_is_applied_again(store: SyncStore) -> None:
    commit(store, [record(5, "2024-01-01T00:00:00Z", name="first")])
    commit(store, [record(5, "2024-01-01T00:00:00Z", name="again")], run_id="run-2")
    stored = stored_record(store, 5)
    assert (stored.payload["name"], stored.run_id) == ("again", "run-2")


def test_one_microsecond_older_is_still_older(store: SyncStore) -> None:
    commit(store, [record(5, "2024-01-01T00:00:00.000001Z", name="new")])
    commit(store, [record(5, "2024-01-01T00:00:00Z", name="old")])
    stored = stored_record(store, 5)
    assert stored.payload["name"] == "new"


def test_comparison_is_by_moment_not_by_local_clock_text(store: SyncStore) -> None:
    # 10:00+05:00 is 05:00 UTC: older than 06:00 UTC although its local text sorts later.
    commit(store, [record(5, "2024-01-01T06:00:00Z", name="new")])
    commit(store, [record(5, "2024-01-01T10:00:00+05:00", name="old")])
    stored = stored_record(store, 5)
    assert stored.payload["name"] == "new"
    commit(store, [record(5, "2024-01-01T02:00:00-05:00", name="newest")])  # 07:00 UTC
    stored = stored_record(store, 5)
    assert (stored.payload["name"], stored.modified_on) == ("newest", datetime(2024, 1, 1, 7, tzinfo=UTC))


def test_a_page_may_repeat_a_record_and_its_newest_version_wins(store: SyncStore) -> None:
    commit(
        store,
        [
            record(5, "2024-01-02T00:00:00Z", name="newest"),
            record(5, "2024-01-01T00:00:00Z", name="older"),
            record(6, "2024-01-01T00:00:00Z", name="other"),
        ],
    )
    stored = stored_record(store, 5)
    assert stored.payload["name"] == "newest"
    assert store.record_ids(TENANT, "customers") == [5, 6]


def test_tenants_and_resources_are_kept_apart(store: SyncStore) -> None:
    commit(store, [record(5, "2024-01-01T00:00:00Z", name="tenant A")], tenant_id=1)
    commit(store, [record(5, "2024-01-01T00:00:00Z", name="tenant B")], tenant_id=2)
    commit(store, [record(5, "2024-01-01T00:00:00Z", resource="jobs", name="a job")], resource="jobs", tenant_id=1)
    a, b = stored_record(store, 5, tenant_id=1), stored_record(store, 5, tenant_id=2)
    job = stored_record(store, 5, tenant_id=1, resource="jobs")
    assert (a.payload["name"], b.payload["name"], job.payload["name"]) == ("tenant A", "tenant B", "a job")
    assert store.get_record(2, "jobs", 5) is None


def test_a_large_page_is_written_in_bulk(store: SyncStore) -> None:
    commit(store, [record(i, "2024-01-01T00:00:00Z", name=f"c{i}") for i in range(1, 2001)])
    assert store.count_records(TENANT, "customers") == 2000


def test_unknown_resource_is_refused(store: SyncStore) -> None:
    with pytest.raises(KeyError, match="unknown ServiceTitan resource 'widgets'"):
        store.record_ids(TENANT, "widgets")


def test_naive_datetime_is_refused_not_guessed(store: SyncStore) -> None:
    naive = ValidRecord(id=1, modified_on=datetime(2024, 1, 1), active=True, deleted=False, payload={})
    with pytest.raises(StatementError, match="naive datetime"):
        commit(store, [naive])
    assert store.count_records(TENANT, "customers") == 0


_TENANTS = itertools.count(10_000)
VERSIONS = st.lists(
    st.tuples(st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=999_999)),
    min_size=1,
    max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions=VERSIONS, page_size=st.integers(min_value=1, max_value=3))
def test_any_delivery_order_converges_on_the_newest_version(
    store: SyncStore, versions: list[tuple[int, int]], page_size: int
) -> None:
    """Whatever order versions arrive in, and however they are paged, the newest one is kept."""
    tenant = next(_TENANTS)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    records = [
        record(9, (base + timedelta(days=day, microseconds=micros)).isoformat(), version=index)
        for index, (day, micros) in enumerate(versions)
    ]
    for start in range(0, len(records), page_size):
        commit(store, records[start : start + page_size], tenant_id=tenant)
    newest = max(r.modified_on for r in records)
    last_newest = [r for r in records if r.modified_on == newest][-1]
    stored = stored_record(store, 9, tenant_id=tenant)
    assert stored.modified_on == newest
    assert stored.payload["version"] == last_newest.payload["version"]
