"""What differs between SQLite and PostgreSQL: engine set-up, upserts, and the DDL lock."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Insert, Table, create_engine, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.elements import KeyedColumnElement

SUPPORTED_DIALECTS = ("sqlite", "postgresql")
#: The PostgreSQL driver the warehouse connection uses: psycopg2, whose upserts run through the driver
#: itself (:mod:`.fast_upsert`). A bare ``postgresql://`` URL means psycopg 3 since SQLAlchemy 2.1,
#: which works through SQLAlchemy's slower batching.
POSTGRES_DRIVERNAME = "postgresql+psycopg2"

Excluded = ReadOnlyColumnCollection[str, KeyedColumnElement[Any]]
"""The ``excluded`` row of an ``ON CONFLICT ... DO UPDATE``: the values that were to be inserted."""

_SQLITE_BUSY_TIMEOUT_S = 30


def create_store_engine(url: str | URL) -> Engine:
    """An engine for ``url``, set up so that transactions behave the same on both dialects.

    For SQLite, Python's driver would start transactions lazily (only before the first write) and
    let a reader upgrade to a writer, which fails at once when another process writes. Instead
    every transaction starts with ``BEGIN IMMEDIATE``: one writer at a time, the others wait up to
    the busy timeout. An in-memory database is one shared connection, so every thread sees it.

    A SQLite file is switched to write-ahead logging with ``synchronous=NORMAL``: a commit costs
    no fsync of its own (a page of 500 records commits about 3x faster), readers never wait for
    the writer, and the database stays consistent through a crash of the process or the machine.
    A power loss may undo the last commits, each a page together with its checkpoint, which the
    next sync fetches again. WAL needs a local filesystem (not NFS), like SQLite's locking itself.
    """
    url = make_url(url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_S}}
    in_memory = url.database in (None, "", ":memory:")
    if in_memory:
        options["poolclass"] = StaticPool
    engine = create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _disable_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        if not in_memory:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def upsert(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    conflict: Sequence[str],
    update: Callable[[Excluded], Mapping[str, Any]],
    where: Callable[[Excluded], ColumnElement[bool]] | None = None,
    index_where: ColumnElement[bool] | None = None,
) -> None:
    """``INSERT ... ON CONFLICT (conflict) DO UPDATE SET update(excluded) [WHERE where(excluded)]``.

    ``rows`` must not repeat a conflict key: PostgreSQL refuses to update one row twice in one statement.

    Many rows go out as multi-row ``INSERT ... VALUES`` statements (SQLAlchemy's "insertmanyvalues":
    a page of 500 records commits in 46 ms instead of 209 ms on a local PostgreSQL, where each row
    was a statement of its own). SQLAlchemy 2.1 batches an ``ON CONFLICT`` insert only when it has a
    ``RETURNING`` clause (sqlalchemy#13130), hence the ``RETURNING`` of the first conflict column,
    whose result is discarded. With more than one row, ``update`` and ``where`` must therefore not
    hold bound parameters of their own (that issue): only columns of the table and of ``excluded``.
    """
    if rows:
        execute_upsert(
            connection,
            upsert_statement(
                connection.dialect.name, table, conflict=conflict, update=update, where=where, index_where=index_where
            ),
            rows,
        )


def upsert_statement(
    dialect_name: str,
    table: Table,
    *,
    conflict: Sequence[str],
    update: Callable[[Excluded], Mapping[str, Any]],
    where: Callable[[Excluded], ColumnElement[bool]] | None = None,
    index_where: ColumnElement[bool] | None = None,
    returning: bool = True,
) -> Insert:
    """The statement :func:`upsert` runs, to build once and reuse for a hot path (see there).

    :param returning: ``False`` leaves out the ``RETURNING`` that only SQLAlchemy's batching needs,
        for a statement run through the DBAPI driver itself (:mod:`.fast_upsert`).
    """
    statement = postgresql.insert(table) if dialect_name == "postgresql" else sqlite.insert(table)
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=[table.c[name] for name in conflict],
        index_where=index_where,
        set_=dict(update(excluded)),
        where=where(excluded) if where is not None else None,
    )
    return statement.returning(table.c[conflict[0]]) if returning else statement


def execute_upsert(connection: Connection, statement: Insert, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run an :func:`upsert_statement` for ``rows`` (its ``RETURNING`` result is discarded)."""
    connection.execute(statement, list(rows)).close()


def lock_for_ddl(connection: Connection, name: str) -> None:
    """Serialise table creation for ``name`` until the current transaction ends.

    PostgreSQL: a transaction-scoped advisory lock, because two workers creating the same table at
    once would otherwise fail on a duplicate catalogue entry. SQLite needs nothing more: every
    transaction of a store engine already holds the database's write lock (``BEGIN IMMEDIATE``).
    """
    if connection.dialect.name == "postgresql":
        digest = hashlib.sha256(f"airflow-provider-servicetitan:{name}".encode()).digest()
        connection.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))
