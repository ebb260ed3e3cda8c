"""The synced records and the checkpoints of the store: idempotent upserts, counts, reads.

The writers take an open connection: they run inside the transactions of ``SyncStore`` that
commit a page or a recovered record together with everything that goes with it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Insert, Table, case, func, select

from airflow_provider_servicetitan.storage.base import StoreBase, select_fields
from airflow_provider_servicetitan.storage.dialects import Excluded, execute_upsert, upsert, upsert_statement
from airflow_provider_servicetitan.storage.fast_upsert import driver_upsert
from airflow_provider_servicetitan.storage.models import Checkpoint, StoredRecord
from airflow_provider_servicetitan.storage.records import ValidRecord

_RECORD_FIELDS = ("modified_on", "active", "deleted", "payload", "synced_at", "run_id")


class RecordsTable(StoreBase):
    """Reading the stored records and checkpoints (``SyncStore`` writes them, a page at a time)."""

    def get_checkpoint(self, credential: str, resource: str) -> Checkpoint | None:
        """Where the sync of ``resource`` for ``credential`` resumes, or ``None`` if it never committed a page."""
        state = self.tables.sync_state
        query = select_fields(Checkpoint, state).where(state.c.credential == credential, state.c.resource == resource)
        return self._fetch_one(Checkpoint, query)

    def record_ids(self, tenant_id: int, resource: str) -> list[int]:
        """Ids of the stored records of ``resource`` for ``tenant_id``, ascending."""
        table = self._record_table(resource)
        with self.engine.connect() as conn:
            return list(
                conn.execute(select(table.c.id).where(table.c.tenant_id == tenant_id).order_by(table.c.id)).scalars()
            )

    def count_records(self, tenant_id: int, resource: str) -> int:
        """How many records of ``resource`` are stored for ``tenant_id`` (deleted ones included)."""
        table = self._record_table(resource)
        with self.engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(table).where(table.c.tenant_id == tenant_id)).scalar_one()
            )

    def get_record(self, tenant_id: int, resource: str, record_id: int) -> StoredRecord | None:
        """One stored record, or ``None``."""
        table = self._record_table(resource)
        query = select_fields(StoredRecord, table).where(table.c.tenant_id == tenant_id, table.c.id == record_id)
        return self._fetch_one(StoredRecord, query)


def upsert_records(
    conn: Connection, table: Table, tenant_id: int, run_id: str, records: Iterable[ValidRecord], now: datetime
) -> None:
    """Store ``records``; a stored record is never replaced by one with an older ``modifiedOn``."""
    # A page may carry the same record twice (recent changes); keep its newest version only.
    newest: dict[int, ValidRecord] = {}
    for record in records:
        kept = newest.get(record.id)
        if kept is None or record.modified_on >= kept.modified_on:
            newest[record.id] = record
    rows = [
        {
            "tenant_id": tenant_id,
            "id": record.id,
            "modified_on": record.modified_on,
            "active": record.active,
            "deleted": record.deleted,
            "payload": record.payload,
            "synced_at": now,
            "run_id": run_id,
        }
        for record in newest.values()
    ]
    if not rows:
        return
    # sqlite3 and psycopg2 run it through the driver itself, in the same transaction (see fast_upsert);
    # only SQLAlchemy's batching needs the RETURNING.
    fast = driver_upsert(conn.dialect)
    run = execute_upsert if fast is None else fast
    run(conn, _records_upsert(conn.dialect.name, table, returning=fast is None), rows)


@functools.cache
def _records_upsert(dialect_name: str, table: Table, *, returning: bool = True) -> Insert:
    """The upsert of a records table, built once per table and dialect: a page is stored many times
    a second, and building it (the ``excluded`` alias of every column) costs as much as 100 rows."""
    return upsert_statement(
        dialect_name,
        table,
        conflict=("tenant_id", "id"),
        update=lambda new: {name: new[name] for name in _RECORD_FIELDS},
        where=lambda new: new.modified_on >= table.c.modified_on,
        returning=returning,
    )


def save_checkpoint(conn: Connection, state: Table, row: Mapping[str, Any], *, restart: bool) -> None:
    """Move the checkpoint forward to ``row`` or, on ``restart``, replace it by ``row``."""

    def merged(new: Excluded) -> dict[str, Any]:
        if restart:
            replaced = ("tenant_id", "continue_from", "last_modified_on", "updated_at", "reexport_run_id")
            return {name: new[name] for name in replaced}
        return {
            "tenant_id": new.tenant_id,
            "continue_from": func.coalesce(new.continue_from, state.c.continue_from),
            "last_modified_on": case(
                (state.c.last_modified_on.is_(None), new.last_modified_on),
                (new.last_modified_on > state.c.last_modified_on, new.last_modified_on),
                else_=state.c.last_modified_on,
            ),
            "updated_at": new.updated_at,
        }

    upsert(conn, state, [row], conflict=("credential", "resource"), update=merged)
