"""A dead letter closed by a person: "handled", with a note saying who and why (no Airflow).

The dead letter is resolved like a recovered one (``resolved_at`` set, so recovery, counts and the
report no longer see it), with ``resolved_run_id`` = ``handled_by:<user>``, and the note goes to a
table of this plugin, ``<prefix>_dead_letter_notes``: both in one transaction. The notes table is
created on first use (``CREATE TABLE IF NOT EXISTS`` semantics) and is not part of the store's
schema version: it is additive and read by nothing of the sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, insert, inspect, select, update
from sqlalchemy.exc import SQLAlchemyError

from airflow_provider_servicetitan.storage import SyncStore
from airflow_provider_servicetitan.storage.types import AUTOINCREMENT_ID, UtcDateTime

__all__ = ["HANDLED_RUN_PREFIX", "MAX_NOTE", "HandledNote", "mark_handled", "notes"]

HANDLED_RUN_PREFIX = "handled_by:"
MAX_NOTE = 2000
"""Longest note kept (characters)."""


@dataclass(frozen=True)
class HandledNote:
    """Who marked a dead letter handled, when, and why."""

    dead_letter_id: int
    credential: str
    handled_by: str
    note: str
    handled_at: datetime


@cache
def _notes_table(prefix: str) -> Table:
    return Table(
        f"{prefix}_dead_letter_notes",
        MetaData(),
        Column("id", AUTOINCREMENT_ID, primary_key=True, autoincrement=True),
        Column("dead_letter_id", BigInteger, nullable=False, index=True),
        Column("credential", String(250), nullable=False),
        Column("handled_by", String(250), nullable=False),
        Column("note", Text, nullable=False),
        Column("handled_at", UtcDateTime, nullable=False),
        Column("attempts", Integer, nullable=False),
    )


def _table(store: SyncStore) -> Table:
    table = _notes_table(store.table_prefix)
    try:
        table.create(store.engine, checkfirst=True)
    except SQLAlchemyError:
        # Another process created it between the check and the CREATE: fine; anything else is not.
        if not inspect(store.engine).has_table(table.name):
            raise
    return table


def mark_handled(store: SyncStore, dead_letter_id: int, *, user: str, note: str) -> HandledNote | None:
    """Close the open dead letter ``dead_letter_id`` as handled by ``user`` with ``note``.

    :returns: the note kept, or ``None`` if the letter was already resolved (nothing is written).
    :raises KeyError: no dead letter has this id.
    :raises ValueError: ``note`` is empty or ``user`` is.
    """
    note = note.strip()
    if not note:
        raise ValueError("a note is required: say why the record needs no recovery")
    if not user:
        raise ValueError("the user who handled the dead letter is required")
    note, user = note[:MAX_NOTE], user[:200]
    letters = store.tables.dead_letters
    table = _table(store)
    handled_at = datetime.now(UTC)
    with store.engine.begin() as conn:
        row = conn.execute(
            select(letters.c.credential, letters.c.attempts).where(letters.c.id == dead_letter_id)
        ).one_or_none()
        if row is None:
            raise KeyError(f"no dead letter with id {dead_letter_id}")
        claimed = conn.execute(
            update(letters)
            .where(letters.c.id == dead_letter_id, letters.c.resolved_at.is_(None))
            .values(resolved_at=handled_at, resolved_run_id=f"{HANDLED_RUN_PREFIX}{user}")
        ).rowcount
        if not claimed:
            return None
        conn.execute(
            insert(table).values(
                dead_letter_id=dead_letter_id,
                credential=row.credential,
                handled_by=user,
                note=note,
                handled_at=handled_at,
                attempts=int(row.attempts),
            )
        )
    return HandledNote(dead_letter_id, row.credential, user, note, handled_at)


def notes(store: SyncStore, dead_letter_id: int) -> list[HandledNote]:
    """The notes kept for ``dead_letter_id``, oldest first."""
    table = _table(store)
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(table.c.dead_letter_id, table.c.credential, table.c.handled_by, table.c.note, table.c.handled_at)
            .where(table.c.dead_letter_id == dead_letter_id)
            .order_by(table.c.id)
        ).all()
    return [HandledNote(int(r.dead_letter_id), r.credential, r.handled_by, r.note, r.handled_at) for r in rows]
