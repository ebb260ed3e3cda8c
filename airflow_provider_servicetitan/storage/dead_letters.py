"""Dead letters: records that could not be stored, parked with their raw payload until recovered.

:func:`park` takes an open connection: a page's bad records are parked in the transaction that
commits its good ones (``SyncStore.commit_page``). Resolving a letter stores its record too, so it
lives on ``SyncStore`` (``resolve_dead_letter``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, Table, func, select, update

from airflow_provider_servicetitan.storage.base import StoreBase, now, select_fields, storable
from airflow_provider_servicetitan.storage.dialects import upsert
from airflow_provider_servicetitan.storage.models import DeadLetter, DeadLetterIn
from airflow_provider_servicetitan.storage.records import record_number


class DeadLetters(StoreBase):
    """Reading dead letters, counting them, and recording failed recovery attempts."""

    def unresolved_dead_letters(
        self,
        credential: str,
        resource: str | None = None,
        *,
        max_attempts: int | None = None,
        fetchable: bool | None = None,
        limit: int = 1000,
    ) -> list[DeadLetter]:
        """Open dead letters of ``credential``, oldest first.

        :param resource: only this resource's.
        :param max_attempts: only those with fewer failed recovery attempts than this.
        :param fetchable: only those that can (``True``) or cannot (``False``) be fetched again by id.
        """
        letters = self.tables.dead_letters
        query = (
            select_fields(DeadLetter, letters)
            .where(letters.c.credential == credential, letters.c.resolved_at.is_(None))
            .order_by(letters.c.id)
            .limit(limit)
        )
        if resource is not None:
            query = query.where(letters.c.resource == resource)
        if max_attempts is not None:
            query = query.where(letters.c.attempts < max_attempts)
        if fetchable is not None:
            number = letters.c.record_number
            query = query.where(number.is_not(None) if fetchable else number.is_(None))
        return self._fetch_all(DeadLetter, query)

    def count_unresolved_dead_letters(self, credential: str, *, min_attempts: int = 0) -> int:
        """How many dead letters of ``credential`` are open with at least ``min_attempts`` failed attempts."""
        return self._count_open(credential, self.tables.dead_letters.c.attempts >= min_attempts)

    def count_dead_letters_needing_attention(self, credential: str, *, max_attempts: int) -> int:
        """How many open dead letters of ``credential`` only a person can resolve.

        Those whose id names no record (they can never be fetched again), and those recovery
        already failed ``max_attempts`` times.
        """
        letters = self.tables.dead_letters
        return self._count_open(credential, letters.c.record_number.is_(None) | (letters.c.attempts >= max_attempts))

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        """One dead letter, resolved or not."""
        letters = self.tables.dead_letters
        return self._fetch_one(DeadLetter, select_fields(DeadLetter, letters).where(letters.c.id == dead_letter_id))

    def fail_dead_letter(
        self, dead_letter_id: int, error_class: str, message: str, trace_id: str | None = None
    ) -> bool:
        """Record a failed recovery attempt: ``attempts`` + 1, the new error, ``last_seen`` = now.

        :returns: ``False`` if the dead letter was already resolved (it is left unchanged).
        :raises KeyError: no dead letter has this id.
        """
        letters = self.tables.dead_letters
        with self.engine.begin() as conn:
            dead_letter_row(conn, letters, dead_letter_id)
            result = conn.execute(
                update(letters)
                .where(letters.c.id == dead_letter_id, letters.c.resolved_at.is_(None))
                .values(
                    attempts=letters.c.attempts + 1,
                    last_seen=now(),
                    error_class=storable(error_class),
                    message=storable(message),
                    trace_id=storable(trace_id),
                )
            )
        return bool(result.rowcount)

    def _count_open(self, credential: str, condition: ColumnElement[bool]) -> int:
        letters = self.tables.dead_letters
        query = (
            select(func.count())
            .select_from(letters)
            .where(letters.c.credential == credential, letters.c.resolved_at.is_(None), condition)
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


def dead_letter_row(conn: Connection, letters: Table, dead_letter_id: int) -> Row[Any]:
    """The dead letter's row, resolved or not.

    :raises KeyError: no dead letter has this id.
    """
    row = conn.execute(select(letters).where(letters.c.id == dead_letter_id)).one_or_none()
    if row is None:
        raise KeyError(f"no dead letter with id {dead_letter_id} in {letters.name}")
    return row


def park(
    conn: Connection,
    letters: Table,
    credential: str,
    tenant_id: int,
    resource: str,
    dead_letters: Iterable[DeadLetterIn],
    parked_at: datetime,
) -> None:
    """Park ``dead_letters``; a bad record seen again updates its open dead letter instead of adding one."""
    rows: dict[str, dict[str, Any]] = {}
    for letter in dead_letters:
        raw = storable(letter.raw)
        record_id = storable(letter.record_id)
        identity = f"raw:{raw}" if record_id is None else f"id:{record_id}"
        key = hashlib.sha256(identity.encode()).hexdigest()
        rows[key] = {
            "credential": credential,
            "tenant_id": tenant_id,
            "resource": resource,
            "record_id": record_id,
            "record_number": record_number(record_id),
            "dedupe_key": key,
            "raw": raw,
            "error_class": storable(letter.error_class),
            "message": storable(letter.message),
            "trace_id": storable(letter.trace_id),
            "attempts": 0,
            "first_seen": parked_at,
            "last_seen": parked_at,
        }
    upsert(
        conn,
        letters,
        list(rows.values()),
        conflict=("credential", "tenant_id", "resource", "dedupe_key"),
        index_where=letters.c.resolved_at.is_(None),
        update=lambda new: {name: new[name] for name in ("raw", "error_class", "message", "trace_id", "last_seen")},
    )
