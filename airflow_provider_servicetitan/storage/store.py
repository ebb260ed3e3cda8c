"""``SyncStore``: everything a sync keeps between runs, in SQLite or PostgreSQL.

Every public write is one transaction. The one that matters most is :meth:`SyncStore.commit_page`:
a page's good records, its bad records (parked as dead letters), the checkpoint after it and the
run's counts are committed together or not at all, so a crash at any moment leaves the store at
the end of the last committed page, and resuming from its checkpoint never loses or repeats work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Row, Select, Table, case, func, select, update
from sqlalchemy.engine import URL

from airflow_provider_servicetitan.client.resources import get_resource
from airflow_provider_servicetitan.errors import ServiceTitanError
from airflow_provider_servicetitan.storage.dialects import (
    SUPPORTED_DIALECTS,
    Excluded,
    create_store_engine,
    lock_for_ddl,
    upsert,
)
from airflow_provider_servicetitan.storage.migrations import upgrade
from airflow_provider_servicetitan.storage.models import (
    INTERRUPTED,
    RECOVERED,
    RUN_STATUSES,
    RUNNING,
    Checkpoint,
    CredentialState,
    CredentialStatus,
    DeadLetter,
    DeadLetterIn,
    RunLog,
    RunOwner,
    RunStatus,
    StoredRecord,
)
from airflow_provider_servicetitan.storage.schema import CREDENTIAL_STATUSES, SCHEMA_VERSION, Tables, build_tables
from airflow_provider_servicetitan.sync.records import ValidRecord, record_number

_T = TypeVar("_T")

_RECORD_FIELDS = ("modified_on", "active", "deleted", "payload", "synced_at", "run_id")
_LOG_COUNTERS = (
    "pages",
    "records_processed",
    "records_successful",
    "records_failed",
    "records_recovered",
    "retries",
    "breaker_events",
)


class SchemaVersionError(ServiceTitanError):
    """The database holds tables of a schema version this code cannot use."""


class SyncStore:
    """Records, checkpoints, dead letters, run log and credential health of the sync.

    :param engine_or_url: a SQLAlchemy URL (SQLite file or memory, or PostgreSQL), or an engine.
        Prefer a URL for SQLite: the engine is then set up for safe concurrent writers (see
        :func:`~airflow_provider_servicetitan.storage.dialects.create_store_engine`).
    :param table_prefix: first part of every table name, so several stores (or tests) can share a database.
    """

    def __init__(self, engine_or_url: Engine | str | URL, *, table_prefix: str = "servicetitan") -> None:
        self.tables: Tables = build_tables(table_prefix)
        self.table_prefix = table_prefix
        self._owns_engine = not isinstance(engine_or_url, Engine)
        self.engine = create_store_engine(engine_or_url) if not isinstance(engine_or_url, Engine) else engine_or_url
        if self.engine.dialect.name not in SUPPORTED_DIALECTS:
            if self._owns_engine:
                self.engine.dispose()
            raise ValueError(
                f"the sync store supports {' and '.join(SUPPORTED_DIALECTS)}, not {self.engine.dialect.name}"
            )

    def close(self) -> None:
        """Release the connections of an engine the store created (a given engine is left alone)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------------

    def create_tables(self) -> None:
        """Create missing tables, upgrade tables of an older schema version, record the version.

        Idempotent and safe to call from many workers at once: one transaction holding the DDL lock.

        :raises SchemaVersionError: the tables were made by a newer provider version.
        """
        version = self.tables.schema_version
        with self.engine.begin() as conn:
            lock_for_ddl(conn, self.table_prefix)
            self.tables.metadata.create_all(conn)
            stored = conn.execute(select(version.c.version).where(version.c.id == 1)).scalar_one_or_none()
            if stored is None:
                conn.execute(version.insert().values(id=1, version=SCHEMA_VERSION, updated_at=_now()))
            elif stored > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"tables {self.table_prefix}_* hold schema version {stored}, but this version of the provider "
                    f"uses version {SCHEMA_VERSION}; install a provider version that matches"
                )
            elif stored < SCHEMA_VERSION:
                upgrade(conn, self.tables, stored, SCHEMA_VERSION)
                conn.execute(update(version).where(version.c.id == 1).values(version=SCHEMA_VERSION, updated_at=_now()))

    def schema_version(self) -> int | None:
        """The schema version recorded in the database, or ``None`` if none is."""
        version = self.tables.schema_version
        with self.engine.connect() as conn:
            return conn.execute(select(version.c.version).where(version.c.id == 1)).scalar_one_or_none()

    # -- sync -----------------------------------------------------------------------------------

    def commit_page(
        self,
        *,
        credential: str,
        tenant_id: int,
        resource: str,
        run_id: str,
        records: Sequence[ValidRecord],
        dead_letters: Sequence[DeadLetterIn] = (),
        continue_from: str | None,
        restart_checkpoint: bool = False,
    ) -> None:
        """Store one page in one transaction: records, dead letters, checkpoint and counts.

        A record never replaces a stored one with a newer ``modifiedOn``. ``continue_from=None``
        keeps the checkpoint's previous token (list endpoints have none). The run's log row gets
        one page and the page's counts added: processed = good + bad, successful = good, failed = bad,
        and its heartbeat set to now.

        :param restart_checkpoint: the first page of a re-export: the checkpoint becomes this page's
            (token and newest ``modifiedOn``, even if behind the old ones) and remembers ``run_id``
            as the run that restarted it. Until this page commits, the old checkpoint stays whole.
        """
        table = self._record_table(resource)
        now = _now()
        newest = max((record.modified_on for record in records), default=None)
        with self.engine.begin() as conn:
            self._upsert_records(conn, table, tenant_id, run_id, records, now)
            self._park(conn, credential, tenant_id, resource, dead_letters, now)
            self._save_checkpoint(
                conn,
                {
                    "credential": credential,
                    "resource": resource,
                    "tenant_id": tenant_id,
                    "continue_from": continue_from,
                    "last_modified_on": newest,
                    "updated_at": now,
                    "reexport_run_id": run_id if restart_checkpoint else None,
                },
                restart=restart_checkpoint,
            )
            counts = {
                "pages": 1,
                "records_processed": len(records) + len(dead_letters),
                "records_successful": len(records),
                "records_failed": len(dead_letters),
            }
            self._add_to_log(conn, run_id, credential, resource, now, counts, heartbeat=True)

    def get_checkpoint(self, credential: str, resource: str) -> Checkpoint | None:
        """Where the sync of ``resource`` for ``credential`` resumes, or ``None`` if it never committed a page."""
        state = self.tables.sync_state
        query = _select(Checkpoint, state).where(state.c.credential == credential, state.c.resource == resource)
        return self._fetch_one(Checkpoint, query)

    # -- dead letters ---------------------------------------------------------------------------

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
            _select(DeadLetter, letters)
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
        letters = self.tables.dead_letters
        query = (
            select(func.count())
            .select_from(letters)
            .where(
                letters.c.credential == credential,
                letters.c.resolved_at.is_(None),
                letters.c.attempts >= min_attempts,
            )
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def count_dead_letters_needing_attention(self, credential: str, *, max_attempts: int) -> int:
        """How many open dead letters of ``credential`` only a person can resolve.

        Those whose id names no record (they can never be fetched again), and those recovery
        already failed ``max_attempts`` times.
        """
        letters = self.tables.dead_letters
        query = (
            select(func.count())
            .select_from(letters)
            .where(
                letters.c.credential == credential,
                letters.c.resolved_at.is_(None),
                letters.c.record_number.is_(None) | (letters.c.attempts >= max_attempts),
            )
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        """One dead letter, resolved or not."""
        letters = self.tables.dead_letters
        return self._fetch_one(DeadLetter, _select(DeadLetter, letters).where(letters.c.id == dead_letter_id))

    def resolve_dead_letter(self, dead_letter_id: int, record: ValidRecord | None, *, run_id: str) -> bool:
        """Store the repaired ``record``, close the dead letter and count it as recovered in ``run_id``'s log.

        ``record=None`` closes a letter whose record no longer exists upstream (it was deleted), so
        there is nothing left to store. Tenant, resource and credential are the dead letter's own.
        A run that did not sync the resource gets a log row of status ``recovered``. One transaction.

        :returns: ``False`` if the dead letter was already resolved (nothing is written then).
        :raises KeyError: no dead letter has this id.
        """
        letters = self.tables.dead_letters
        now = _now()
        with self.engine.begin() as conn:
            letter = self._dead_letter_row(conn, dead_letter_id)
            claimed = conn.execute(
                update(letters)
                .where(letters.c.id == dead_letter_id, letters.c.resolved_at.is_(None))
                .values(resolved_at=now, resolved_run_id=run_id)
            ).rowcount
            if not claimed:
                return False
            if record is not None:
                table = self._record_table(letter.resource)
                self._upsert_records(conn, table, letter.tenant_id, run_id, [record], now)
            counts = {"records_recovered": 1}
            self._add_to_log(conn, run_id, letter.credential, letter.resource, now, counts, new_status=RECOVERED)
        return True

    def fail_dead_letter(
        self, dead_letter_id: int, error_class: str, message: str, trace_id: str | None = None
    ) -> bool:
        """Record a failed recovery attempt: ``attempts`` + 1, the new error, ``last_seen`` = now.

        :returns: ``False`` if the dead letter was already resolved (it is left unchanged).
        :raises KeyError: no dead letter has this id.
        """
        letters = self.tables.dead_letters
        with self.engine.begin() as conn:
            self._dead_letter_row(conn, dead_letter_id)
            result = conn.execute(
                update(letters)
                .where(letters.c.id == dead_letter_id, letters.c.resolved_at.is_(None))
                .values(
                    attempts=letters.c.attempts + 1,
                    last_seen=_now(),
                    error_class=_storable(error_class),
                    message=_storable(message),
                    trace_id=_storable(trace_id),
                )
            )
        return bool(result.rowcount)

    # -- run log --------------------------------------------------------------------------------

    def start_run(self, run_id: str, credential: str, resource: str, owner: RunOwner | None = None) -> None:
        """Mark (run, credential, resource) running, owned by ``owner``, heartbeat now.

        A re-run (Airflow retry) reuses its row and takes it over: the counts of pages committed by
        earlier tries stay, since those pages are not fetched again.
        """
        log = self.tables.sync_log
        now = _now()
        row = self._new_log_row(run_id, credential, resource, now)
        row.update(
            owner_host=owner.host if owner else None,
            owner_scope=owner.scope if owner else None,
            owner_pid=owner.pid if owner else None,
            heartbeat_at=now,
        )
        taken_over = ("status", "finished_at", "message", "owner_host", "owner_scope", "owner_pid", "heartbeat_at")
        with self.engine.begin() as conn:
            upsert(
                conn,
                log,
                [row],
                conflict=("run_id", "credential", "resource"),
                update=lambda new: {**{name: new[name] for name in taken_over}, "interrupted_by": None},
            )

    def finish_run(
        self,
        run_id: str,
        credential: str,
        resource: str,
        status: RunStatus,
        message: str | None = None,
        *,
        retries: int = 0,
        breaker_events: int = 0,
    ) -> None:
        """Set the final status and message; ``retries`` and ``breaker_events`` of this try are added."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        log = self.tables.sync_log
        now = _now()
        row = self._new_log_row(run_id, credential, resource, now)
        row.update(status=status, finished_at=now, message=message, retries=retries, breaker_events=breaker_events)
        with self.engine.begin() as conn:
            upsert(
                conn,
                log,
                [row],
                conflict=("run_id", "credential", "resource"),
                update=lambda new: {
                    "status": new.status,
                    "finished_at": new.finished_at,
                    "message": new.message,
                    "retries": log.c.retries + new.retries,
                    "breaker_events": log.c.breaker_events + new.breaker_events,
                    # It finished after all: whoever took it for dead was wrong.
                    "interrupted_by": None,
                },
            )

    def get_run_log(self, run_id: str) -> list[RunLog]:
        """Every (credential, resource) row of ``run_id``, sorted by credential then resource."""
        log = self.tables.sync_log
        query = _select(RunLog, log).where(log.c.run_id == run_id).order_by(log.c.credential, log.c.resource)
        return self._fetch_all(RunLog, query)

    def running_runs(self, credential: str, resource: str) -> list[RunLog]:
        """The rows of ``credential`` and ``resource`` that still say ``running``, oldest first."""
        log = self.tables.sync_log
        query = (
            _select(RunLog, log)
            .where(log.c.credential == credential, log.c.resource == resource, log.c.status == RUNNING)
            .order_by(log.c.started_at, log.c.run_id)
        )
        return self._fetch_all(RunLog, query)

    def mark_interrupted(self, seen: RunLog, *, by_run_id: str, message: str) -> bool:
        """Close the running row ``seen`` as ``interrupted`` (``finished_at`` = now, ``interrupted_by``).

        Only if the row is as it was read: still running, same owner, same heartbeat. A page
        committed or a retry started since then means its run is alive, and the row is left alone.

        :returns: whether the row was closed.
        """
        log = self.tables.sync_log
        with self.engine.begin() as conn:
            closed = conn.execute(
                update(log)
                .where(
                    log.c.run_id == seen.run_id,
                    log.c.credential == seen.credential,
                    log.c.resource == seen.resource,
                    log.c.status == RUNNING,
                    log.c.owner_scope.is_not_distinct_from(seen.owner_scope),
                    log.c.owner_pid.is_not_distinct_from(seen.owner_pid),
                    log.c.heartbeat_at.is_not_distinct_from(seen.heartbeat_at),
                )
                .values(status=INTERRUPTED, finished_at=_now(), message=message, interrupted_by=by_run_id)
            ).rowcount
        return bool(closed)

    def interrupted_runs(self, credential: str, *, by_run_id: str) -> list[RunLog]:
        """The rows of ``credential`` that syncs of ``by_run_id`` found interrupted, by resource then start."""
        log = self.tables.sync_log
        query = (
            _select(RunLog, log)
            .where(log.c.credential == credential, log.c.status == INTERRUPTED, log.c.interrupted_by == by_run_id)
            .order_by(log.c.resource, log.c.started_at)
        )
        return self._fetch_all(RunLog, query)

    # -- credentials ----------------------------------------------------------------------------

    def set_credential_status(
        self,
        credential: str,
        status: CredentialState,
        reason: str | None = None,
        secret_fingerprint: str | None = None,
    ) -> CredentialStatus:
        """Record a credential's health. ``since`` moves only when the status changes.

        :returns: the stored status.
        """
        if status not in CREDENTIAL_STATUSES:
            raise ValueError(f"credential status must be one of {', '.join(CREDENTIAL_STATUSES)}, not {status!r}")
        table = self.tables.credential_status
        now = _now()
        with self.engine.begin() as conn:
            upsert(
                conn,
                table,
                [
                    {
                        "credential": credential,
                        "status": status,
                        "since": now,
                        "reason": reason,
                        "secret_fingerprint": secret_fingerprint,
                        "updated_at": now,
                    }
                ],
                conflict=("credential",),
                update=lambda new: {
                    "status": new.status,
                    "since": case((table.c.status == new.status, table.c.since), else_=new.since),
                    "reason": new.reason,
                    "secret_fingerprint": new.secret_fingerprint,
                    "updated_at": new.updated_at,
                },
            )
            row = conn.execute(_select(CredentialStatus, table).where(table.c.credential == credential)).one()
        return _to(CredentialStatus, row)

    def get_credential_status(self, credential: str) -> CredentialStatus | None:
        """A credential's last recorded health, or ``None``."""
        table = self.tables.credential_status
        return self._fetch_one(
            CredentialStatus, _select(CredentialStatus, table).where(table.c.credential == credential)
        )

    # -- reading records ------------------------------------------------------------------------

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
        query = _select(StoredRecord, table).where(table.c.tenant_id == tenant_id, table.c.id == record_id)
        return self._fetch_one(StoredRecord, query)

    # -- internals ------------------------------------------------------------------------------

    def _record_table(self, resource: str) -> Table:
        return self.tables.records[get_resource(resource).name]

    def _fetch_one(self, cls: type[_T], query: Select[Any]) -> _T | None:
        with self.engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _to(cls, row)

    def _fetch_all(self, cls: type[_T], query: Select[Any]) -> list[_T]:
        with self.engine.connect() as conn:
            return [_to(cls, row) for row in conn.execute(query)]

    def _dead_letter_row(self, conn: Connection, dead_letter_id: int) -> Row[Any]:
        letters = self.tables.dead_letters
        row = conn.execute(select(letters).where(letters.c.id == dead_letter_id)).one_or_none()
        if row is None:
            raise KeyError(f"no dead letter with id {dead_letter_id} in {letters.name}")
        return row

    @staticmethod
    def _upsert_records(
        conn: Connection, table: Table, tenant_id: int, run_id: str, records: Iterable[ValidRecord], now: datetime
    ) -> None:
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
        upsert(
            conn,
            table,
            rows,
            conflict=("tenant_id", "id"),
            update=lambda new: {name: new[name] for name in _RECORD_FIELDS},
            where=lambda new: new.modified_on >= table.c.modified_on,
        )

    def _park(
        self,
        conn: Connection,
        credential: str,
        tenant_id: int,
        resource: str,
        dead_letters: Iterable[DeadLetterIn],
        now: datetime,
    ) -> None:
        letters = self.tables.dead_letters
        rows: dict[str, dict[str, Any]] = {}
        for letter in dead_letters:
            raw = _storable(letter.raw)
            record_id = _storable(letter.record_id)
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
                "error_class": _storable(letter.error_class),
                "message": _storable(letter.message),
                "trace_id": _storable(letter.trace_id),
                "attempts": 0,
                "first_seen": now,
                "last_seen": now,
            }
        upsert(
            conn,
            letters,
            list(rows.values()),
            conflict=("credential", "tenant_id", "resource", "dedupe_key"),
            index_where=letters.c.resolved_at.is_(None),
            update=lambda new: {name: new[name] for name in ("raw", "error_class", "message", "trace_id", "last_seen")},
        )

    def _save_checkpoint(self, conn: Connection, row: Mapping[str, Any], *, restart: bool) -> None:
        """Move the checkpoint forward to ``row`` or, on ``restart``, replace it by ``row``."""
        state = self.tables.sync_state

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

    def _add_to_log(
        self,
        conn: Connection,
        run_id: str,
        credential: str,
        resource: str,
        now: datetime,
        counts: Mapping[str, int],
        *,
        heartbeat: bool = False,
        new_status: str = RUNNING,
    ) -> None:
        """Add ``counts`` to the run's row; a row made here gets ``new_status`` (finished unless running).

        :param heartbeat: a sign of life of the run's sync: set its ``heartbeat_at`` to now.
        """
        log = self.tables.sync_log
        row = self._new_log_row(run_id, credential, resource, now)
        row.update(counts, status=new_status, finished_at=None if new_status == RUNNING else now)
        if heartbeat:
            row["heartbeat_at"] = now
        upsert(
            conn,
            log,
            [row],
            conflict=("run_id", "credential", "resource"),
            update=lambda new: (
                {name: log.c[name] + new[name] for name in counts}
                | ({"heartbeat_at": new.heartbeat_at} if heartbeat else {})
            ),
        )

    @staticmethod
    def _new_log_row(run_id: str, credential: str, resource: str, now: datetime) -> dict[str, Any]:
        get_resource(resource)  # refuse an unknown resource before anything is written
        return {
            "run_id": run_id,
            "credential": credential,
            "resource": resource,
            "status": RUNNING,
            "started_at": now,
            **dict.fromkeys(_LOG_COUNTERS, 0),
        }


def _now() -> datetime:
    return datetime.now(UTC)


def _storable(text: str | None) -> str | None:
    """``text`` as PostgreSQL can keep it: NUL and lone surrogates written as escapes, the rest unchanged."""
    if text is None:
        return None
    return text.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")


def _select(cls: type[Any], table: Table) -> Select[Any]:
    """Select the columns of ``table`` named like the fields of dataclass ``cls``."""
    return select(*(table.c[field.name] for field in fields(cls)))


def _to(cls: type[_T], row: Row[Any]) -> _T:
    return cls(**row._mapping)
