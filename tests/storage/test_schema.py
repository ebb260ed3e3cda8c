"""Creating the tables: idempotent, safe under concurrency, versioned, typed as documented."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.dialects.postgresql import JSONB

from airflow_provider_servicetitan.catalog import RESOURCES
from airflow_provider_servicetitan.storage import SCHEMA_VERSION, SchemaVersionError, SyncStore
from tests.storage.factories import TENANT, commit, record

EXPECTED_TABLES = {
    "servicetitan_schema_version",
    "servicetitan_sync_state",
    "servicetitan_dead_letters",
    "servicetitan_sync_log",
    "servicetitan_credential_status",
    *(f"servicetitan_{name}" for name in RESOURCES),
}


def test_create_tables_creates_every_table_and_records_the_version(store: SyncStore) -> None:
    assert set(inspect(store.engine).get_table_names()) == EXPECTED_TABLES
    assert store.schema_version() == SCHEMA_VERSION


def test_create_tables_twice_keeps_the_data(store: SyncStore) -> None:
    commit(store, [record(1, "2024-01-01T00:00:00Z")])
    store.create_tables()
    assert store.record_ids(TENANT, "customers") == [1]
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM servicetitan_schema_version")).scalar_one() == 1


def test_create_tables_concurrently_from_many_workers(store_url: str) -> None:
    workers = 8
    barrier = threading.Barrier(workers)
    stores = [SyncStore(store_url) for _ in range(workers)]

    def create(sync_store: SyncStore) -> None:
        barrier.wait(timeout=10)
        sync_store.create_tables()

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(create, sync_store) for sync_store in stores]:
                future.result(timeout=60)
        assert set(inspect(stores[0].engine).get_table_names()) == EXPECTED_TABLES
        assert stores[0].schema_version() == SCHEMA_VERSION
    finally:
        for sync_store in stores:
            sync_store.close()


def test_a_different_schema_version_is_refused(store: SyncStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE servicetitan_schema_version SET version = :v"), {"v": SCHEMA_VERSION + 1})
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
        store.create_tables()


def test_table_prefix_isolates_stores_in_one_database(store: SyncStore, store_url: str) -> None:
    with SyncStore(store_url, table_prefix="other") as other:
        other.create_tables()
        commit(store, [record(1, "2024-01-01T00:00:00Z")])
        assert other.record_ids(TENANT, "customers") == []
        assert "other_customers" in inspect(other.engine).get_table_names()


@pytest.mark.parametrize("prefix", ["", "Upper", "1st", "has-dash", "x" * 31, "a;drop"])
def test_invalid_table_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="table prefix"):
        SyncStore("sqlite://", table_prefix=prefix)


def test_column_types(store: SyncStore) -> None:
    columns = {column["name"]: column["type"] for column in inspect(store.engine).get_columns("servicetitan_jobs")}
    if store.engine.dialect.name == "postgresql":
        assert isinstance(columns["payload"], JSONB)
        with store.engine.connect() as conn:
            data_types: dict[str, str] = dict(
                conn.execute(
                    text(
                        "SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = current_schema() AND table_name = 'servicetitan_jobs'"
                    )
                ).all()
            )
        assert data_types["payload"] == "jsonb"
        assert data_types["modified_on"] == "timestamp with time zone"
        assert data_types["id"] == "bigint"
    else:
        assert columns["payload"].__class__.__name__ == "JSON"
    primary_key = inspect(store.engine).get_pk_constraint("servicetitan_jobs")["constrained_columns"]
    assert primary_key == ["tenant_id", "id"]


def test_jsonb_payload_can_be_queried_on_postgresql(store: SyncStore) -> None:
    commit(store, [record(1, "2024-01-01T00:00:00Z", name="Ada", address={"city": "Fresno"})])
    if store.engine.dialect.name == "postgresql":
        query = 'SELECT id FROM servicetitan_customers WHERE payload @> \'{"address": {"city": "Fresno"}}\''
    else:
        query = "SELECT id FROM servicetitan_customers WHERE json_extract(payload, '$.address.city') = 'Fresno'"
    with store.engine.connect() as conn:
        assert conn.execute(text(query)).scalars().all() == [1]


def test_in_memory_sqlite_is_shared_by_every_thread() -> None:
    with SyncStore("sqlite://") as memory_store:
        memory_store.create_tables()
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(commit, memory_store, [record(1, "2024-01-01T00:00:00Z")]).result()
        assert memory_store.record_ids(TENANT, "customers") == [1]
