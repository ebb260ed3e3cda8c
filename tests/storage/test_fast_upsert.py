"""The records upsert through the DBAPI driver (sqlite3, psycopg2): the rows SQLAlchemy stores, in its transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError

from airflow_provider_servicetitan.storage import SyncStore, fast_upsert
from airflow_provider_servicetitan.storage.records import ValidRecord
from airflow_provider_servicetitan.storage.records_table import _records_upsert, upsert_records
from tests.storage.factories import CREDENTIAL, RUN, commit, dead_letter, record, saved_checkpoint, stored_record

ADDRESS = {"lines": ["1 Main St", None], "geo": {"lat": 1.5, "n": [1]}, "city": "Zürich"}
SYNCED_AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
SQLALCHEMY_TENANT, FAST_TENANT = 1, 2

# Pages as a sync may deliver them: unicode, nested JSON, None fields, deleted and inactive records,
# offsets other than UTC, one id twice in a page, and an older version arriving after a newer one.
PAGES = [
    [
        record(1, "2024-03-01T12:00:00.1234567Z", name="Zoë Ødegård 北京 🚀", note=None),
        record(2, "2024-03-01T10:00:00+05:00", name="first", address=ADDRESS),
        record(3, "2024-03-01T00:00:00-08:00", active=False, deleted=True, tags=[]),
        record(4, "2024-03-02T00:00:00Z", name="older in its page"),
        record(4, "2024-03-03T00:00:00Z", name="newest in its page"),
        record(4, "2024-03-01T00:00:00Z", name="oldest in its page"),
    ],
    [
        record(1, "2024-02-01T00:00:00Z", name="older, not applied"),
        record(2, "2024-03-01T05:00:00Z", name="the same moment, applied again", address=ADDRESS),
        record(3, "2024-03-09T00:00:00.000001Z", active=True, deleted=False, name='quote " and \\ and %s'),
        *(record(number, "2024-03-05T00:00:00Z", name=f"bulk {number}") for number in range(10, 510)),
    ],
]


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def any_store(request: pytest.FixtureRequest) -> Iterator[SyncStore]:
    """A store on a SQLite file, in SQLite memory and on PostgreSQL (psycopg2), with tables of its own."""
    if request.param == "sqlite-file":
        tmp_path: Path = request.getfixturevalue("tmp_path")
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = "sqlite://" if request.param == "sqlite-memory" else request.getfixturevalue("postgres_url")
    with SyncStore(url, table_prefix=f"fast_{uuid.uuid4().hex[:8]}") as store:
        store.create_tables()
        yield store
        store.tables.metadata.drop_all(store.engine)


@pytest.fixture
def sqlalchemy_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every driver takes the SQLAlchemy path, as drivers without a fast path do."""
    monkeypatch.setattr(fast_upsert, "DRIVER_UPSERTS", {})


def store_pages(store: SyncStore, tenant_id: int, pages: list[list[ValidRecord]] = PAGES) -> None:
    table = store.tables.records["customers"]
    for number, page in enumerate(pages):
        with store.engine.begin() as conn:
            upsert_records(conn, table, tenant_id, f"run-{number}", page, SYNCED_AT)


def raw_rows(store: SyncStore, tenant_id: int) -> list[tuple[Any, ...]]:
    """The stored rows of ``tenant_id`` as the database holds them, read past SQLAlchemy's types."""
    name = store.tables.records["customers"].name
    columns = "id, modified_on, active, deleted, payload, synced_at, run_id"
    if store.engine.dialect.name == "sqlite":
        query = f"SELECT {columns}, typeof(modified_on), typeof(active), typeof(payload) FROM {name}"  # noqa: S608
    else:
        query = f"SELECT id, {name}::text FROM {name}"  # noqa: S608 (the whole row as PostgreSQL writes it out)
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(f"{query} WHERE tenant_id = {tenant_id} ORDER BY id").all()
    if store.engine.dialect.name == "postgresql":  # the row's text starts with its tenant id
        return [(row[0], row[1].split(",", 1)[1]) for row in rows]
    return [tuple(row) for row in rows]


def inserts_seen(engine: Engine, table_name: str) -> list[str]:
    """The INSERTs into ``table_name`` that go through SQLAlchemy's cursor execution from now on."""
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith(f"INSERT INTO {table_name} "):
            seen.append(statement)

    return seen


def test_both_paths_store_the_same_bytes(any_store: SyncStore, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(fast_upsert, "DRIVER_UPSERTS", {})
        store_pages(any_store, SQLALCHEMY_TENANT)
    store_pages(any_store, FAST_TENANT)

    fast = raw_rows(any_store, FAST_TENANT)
    assert fast == raw_rows(any_store, SQLALCHEMY_TENANT)
    assert len(fast) == 4 + 500
    # And those are the right rows: the newest version of each record, whatever order it came in.
    newest = {
        record_id: stored_record(any_store, record_id, tenant_id=FAST_TENANT).payload.get("name")
        for record_id in (1, 2, 3, 4)
    }
    assert newest == {
        1: "Zoë Ødegård 北京 🚀",
        2: "the same moment, applied again",
        3: 'quote " and \\ and %s',
        4: "newest in its page",
    }
    first = stored_record(any_store, 1, tenant_id=FAST_TENANT)
    assert (first.modified_on, first.run_id, first.synced_at) == (
        datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "run-0",
        SYNCED_AT,
    )
    assert first.payload["note"] is None
    second = stored_record(any_store, 2, tenant_id=FAST_TENANT)
    assert (second.payload["address"], second.run_id) == (ADDRESS, "run-1")
    third = stored_record(any_store, 3, tenant_id=FAST_TENANT)
    assert (third.active, third.deleted, third.modified_on) == (
        True,
        False,
        datetime(2024, 3, 9, 0, 0, 0, 1, tzinfo=UTC),
    )


def test_the_fast_path_runs_for_sqlite3_and_psycopg2(any_store: SyncStore) -> None:
    expected = {"pysqlite": fast_upsert.sqlite_executemany, "psycopg2": fast_upsert.psycopg2_execute_values}
    assert fast_upsert.driver_upsert(any_store.engine.dialect) is expected[any_store.engine.dialect.driver]
    table_name = any_store.tables.records["customers"].name
    seen = inserts_seen(any_store.engine, table_name)
    commit(any_store, PAGES[0])
    assert seen == []  # the records went past SQLAlchemy's execution, straight to the driver
    assert any_store.record_ids(1001, "customers") == [1, 2, 3, 4]


def test_without_a_fast_path_sqlalchemy_runs_the_upsert(any_store: SyncStore, sqlalchemy_only: None) -> None:
    seen = inserts_seen(any_store.engine, any_store.tables.records["customers"].name)
    commit(any_store, PAGES[0])
    assert len(seen) == 1
    assert any_store.record_ids(1001, "customers") == [1, 2, 3, 4]


@pytest.mark.parametrize("driver", ["psycopg 3", "sqlite3 with named parameters"])
def test_other_drivers_keep_the_sqlalchemy_path(driver: str, request: pytest.FixtureRequest) -> None:
    if driver == "psycopg 3":
        engine = create_engine(make_url(request.getfixturevalue("postgres_url")).set(drivername="postgresql+psycopg"))
    else:
        engine = create_engine("sqlite://", paramstyle="named")
    with SyncStore(engine, table_prefix=f"fast_{uuid.uuid4().hex[:8]}") as store:
        store.create_tables()
        assert fast_upsert.driver_upsert(store.engine.dialect) is None
        seen = inserts_seen(store.engine, store.tables.records["customers"].name)
        commit(store, PAGES[0])
        assert len(seen) == 1
        assert store.record_ids(1001, "customers") == [1, 2, 3, 4]
        store.tables.metadata.drop_all(store.engine)
    engine.dispose()


def fail_on_record(store: SyncStore, record_id: int) -> None:
    """Make the database refuse to store record ``record_id``: the page fails midway, its earlier rows written."""
    table = store.tables.records["customers"].name
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER {table}_refuse BEFORE INSERT ON {table} WHEN NEW.id = {record_id} "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        else:
            conn.exec_driver_sql(
                f"CREATE FUNCTION {table}_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$BEGIN IF NEW.id = {record_id} THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END$$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER {table}_refuse BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_refuse()"
            )


def test_a_failure_midway_rolls_back_the_page_with_its_checkpoint(any_store: SyncStore) -> None:
    commit(any_store, [record(1, "2024-01-01T00:00:00Z", name="before")], continue_from="tok-1")
    fail_on_record(any_store, 300)

    with pytest.raises(DBAPIError, match="refused by the test"):
        commit(any_store, PAGES[1], [dead_letter("x")], continue_from="tok-2", run_id="run-2")

    assert any_store.record_ids(1001, "customers") == [1]
    assert stored_record(any_store, 1).payload["name"] == "before"
    assert saved_checkpoint(any_store).continue_from == "tok-1"
    assert any_store.get_run_log("run-2") == []
    assert any_store.unresolved_dead_letters(CREDENTIAL) == []
    # The connection is still good for the next page.
    commit(any_store, [record(2, "2024-01-02T00:00:00Z")], continue_from="tok-3")
    assert any_store.record_ids(1001, "customers") == [1, 2]
    assert saved_checkpoint(any_store).continue_from == "tok-3"


def test_a_value_its_type_refuses_is_a_statement_error_and_nothing_is_kept(any_store: SyncStore) -> None:
    naive = ValidRecord(id=7, modified_on=datetime(2024, 1, 1), active=True, deleted=False, payload={})
    with pytest.raises(StatementError, match="naive datetime"):
        store_pages(any_store, FAST_TENANT, [[record(6, "2024-01-01T00:00:00Z"), naive]])
    assert any_store.record_ids(FAST_TENANT, "customers") == []


def test_a_lost_postgresql_connection_is_invalidated_as_sqlalchemy_would(
    postgres_url: str, postgres_engine: Engine
) -> None:
    with SyncStore(postgres_url, table_prefix=f"fast_{uuid.uuid4().hex[:8]}") as store:
        store.create_tables()
        table = store.tables.records["customers"]
        with store.engine.connect() as conn:
            conn.begin()
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with postgres_engine.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(OperationalError) as lost:
                upsert_records(conn, table, FAST_TENANT, RUN, PAGES[0], SYNCED_AT)
            assert lost.value.connection_invalidated
            assert conn.invalidated
        commit(store, [record(8, "2024-01-01T00:00:00Z")])  # a new connection takes over
        assert store.record_ids(1001, "customers") == [8]
        store.tables.metadata.drop_all(store.engine)


def test_outside_a_transaction_it_begins_one_as_sqlalchemy_would(any_store: SyncStore) -> None:
    table = any_store.tables.records["customers"]
    with any_store.engine.connect() as conn:
        upsert_records(conn, table, 1001, RUN, [record(8, "2024-01-01T00:00:00Z")], SYNCED_AT)
        assert conn.in_transaction()
        conn.commit()
    assert any_store.record_ids(1001, "customers") == [8]


def test_the_sql_is_compiled_once_per_dialect_and_table(any_store: SyncStore) -> None:
    statement = _records_upsert(any_store.engine.dialect.name, any_store.tables.records["customers"], returning=False)
    compiled = fast_upsert._compile(any_store.engine.dialect, statement)
    store_pages(any_store, FAST_TENANT)
    assert fast_upsert._compile(any_store.engine.dialect, statement) is compiled
    assert "RETURNING" not in compiled.sql
    assert "WHERE excluded.modified_on >=" in compiled.sql
