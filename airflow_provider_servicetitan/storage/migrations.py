"""Upgrades of an existing store, one schema version at a time (run by ``SyncStore.create_tables``).

A step changes tables created by the version before it. It runs inside the transaction that holds
the DDL lock and records the new version, so a crash leaves the old version whole and many workers
starting at once upgrade the database once.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Table, bindparam, inspect, select, text, update
from sqlalchemy.schema import CreateColumn

from airflow_provider_servicetitan.storage.records import record_number
from airflow_provider_servicetitan.storage.schema import Tables

Migration = Callable[[Connection, Tables], None]


def _add_columns(conn: Connection, table: Table, *names: str) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each of ``names`` the table lacks, typed as ``table`` declares it."""
    present = {column["name"] for column in inspect(conn).get_columns(table.name)}
    quoted_table = conn.dialect.identifier_preparer.format_table(table)
    for name in names:
        if name not in present:
            column = CreateColumn(table.c[name]).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {quoted_table} ADD COLUMN {column}"))


def _add_indexes(conn: Connection, table: Table, *names: str) -> None:
    """Create each index of ``names`` that ``table`` declares and the database lacks."""
    for index in table.indexes:
        if index.name in names:
            index.create(conn, checkfirst=True)


def _to_version_2(conn: Connection, tables: Tables) -> None:
    """Run owners, heartbeats and ``interrupted_by``; re-exports; the number a dead letter is fetched by.

    Open and closed dead letters get their ``record_number`` from their ``record_id``, so letters
    parked as ``"ST-123"`` become recoverable and those without a usable id need a person at once.
    """
    _add_columns(conn, tables.sync_state, "reexport_run_id")
    log = tables.sync_log
    _add_columns(conn, log, "owner_host", "owner_scope", "owner_pid", "heartbeat_at", "interrupted_by")
    _add_indexes(conn, log, f"ix_{log.name}_status", f"ix_{log.name}_interrupted_by")
    letters = tables.dead_letters
    _add_columns(conn, letters, "record_number")
    rows = conn.execute(select(letters.c.id, letters.c.record_id).where(letters.c.record_id.is_not(None)))
    numbered = [
        {"letter_id": letter_id, "number": number}
        for letter_id, record_id in rows
        if (number := record_number(record_id)) is not None
    ]
    if numbered:
        conn.execute(
            update(letters).where(letters.c.id == bindparam("letter_id")).values(record_number=bindparam("number")),
            numbered,
        )


STEPS: dict[int, Migration] = {1: _to_version_2}
"""The step that upgrades a database from each version to the next."""


def upgrade(conn: Connection, tables: Tables, stored: int, target: int) -> None:
    """Apply every step from version ``stored`` to ``target``."""
    for version in range(stored, target):
        STEPS[version](conn, tables)
