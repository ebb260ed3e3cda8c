"""``SyncStore``: everything a sync keeps between runs, in SQLite or PostgreSQL.

Every public write is one transaction. The one that matters most is :meth:`SyncStore.commit_page`:
a page's good records, its bad records (parked as dead letters), the checkpoint after it and the
run's counts are committed together or not at all, so a crash at any moment leaves the store at
the end of the last committed page, and resuming from its checkpoint never loses or repeats work.

The store is composed of one mixin per kind of row (see :mod:`.base` for why mixins): records and
checkpoints (:mod:`.records_table`), dead letters (:mod:`.dead_letters`), the run log
(:mod:`.run_log`) and credential health (:mod:`.credential_status`). What spans several of them
lives here: the schema, the transactions that write more than one kind of row, and a run's totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select, update

from airflow_provider_servicetitan.errors import ServiceTitanError
from airflow_provider_servicetitan.storage.base import now
from airflow_provider_servicetitan.storage.credential_status import CredentialStatuses
from airflow_provider_servicetitan.storage.dead_letters import DeadLetters, dead_letter_row, park
from airflow_provider_servicetitan.storage.dialects import lock_for_ddl
from airflow_provider_servicetitan.storage.migrations import upgrade
from airflow_provider_servicetitan.storage.models import RECOVERED, CredentialTotals, DeadLetterIn, RunCounts
from airflow_provider_servicetitan.storage.records import ValidRecord
from airflow_provider_servicetitan.storage.records_table import RecordsTable, save_checkpoint, upsert_records
from airflow_provider_servicetitan.storage.run_log import RunLogs, add_to_log
from airflow_provider_servicetitan.storage.schema import SCHEMA_VERSION


class SchemaVersionError(ServiceTitanError):
    """The database holds tables of a schema version this code cannot use."""


class SyncStore(RecordsTable, DeadLetters, RunLogs, CredentialStatuses):
    """Records, checkpoints, dead letters, run log and credential health of the sync.

    :param engine_or_url: a SQLAlchemy URL (SQLite file or memory, or PostgreSQL), or an engine.
        Prefer a URL for SQLite: the engine is then set up for safe concurrent writers (see
        :func:`~airflow_provider_servicetitan.storage.dialects.create_store_engine`).
    :param table_prefix: first part of every table name, so several stores (or tests) can share a database.
    """

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
                conn.execute(version.insert().values(id=1, version=SCHEMA_VERSION, updated_at=now()))
            elif stored > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"tables {self.table_prefix}_* hold schema version {stored}, but this version of the provider "
                    f"uses version {SCHEMA_VERSION}; install a provider version that matches"
                )
            elif stored < SCHEMA_VERSION:
                upgrade(conn, self.tables, stored, SCHEMA_VERSION)
                conn.execute(update(version).where(version.c.id == 1).values(version=SCHEMA_VERSION, updated_at=now()))

    def schema_version(self) -> int | None:
        """The schema version recorded in the database, or ``None`` if none is."""
        version = self.tables.schema_version
        with self.engine.connect() as conn:
            return conn.execute(select(version.c.version).where(version.c.id == 1)).scalar_one_or_none()

    # -- writes that span several tables ----------------------------------------------------------

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
        committed = now()
        newest = max((record.modified_on for record in records), default=None)
        counts = RunCounts(
            pages=1,
            records_processed=len(records) + len(dead_letters),
            records_successful=len(records),
            records_failed=len(dead_letters),
        )
        with self.engine.begin() as conn:
            upsert_records(conn, table, tenant_id, run_id, records, committed)
            park(conn, self.tables.dead_letters, credential, tenant_id, resource, dead_letters, committed)
            save_checkpoint(
                conn,
                self.tables.sync_state,
                {
                    "credential": credential,
                    "resource": resource,
                    "tenant_id": tenant_id,
                    "continue_from": continue_from,
                    "last_modified_on": newest,
                    "updated_at": committed,
                    "reexport_run_id": run_id if restart_checkpoint else None,
                },
                restart=restart_checkpoint,
            )
            add_to_log(conn, self.tables.sync_log, run_id, credential, resource, committed, counts, heartbeat=True)

    def resolve_dead_letter(self, dead_letter_id: int, record: ValidRecord | None, *, run_id: str) -> bool:
        """Store the repaired ``record``, close the dead letter and count it as recovered in ``run_id``'s log.

        ``record=None`` closes a letter whose record no longer exists upstream (it was deleted), so
        there is nothing left to store. Tenant, resource and credential are the dead letter's own.
        A run that did not sync the resource gets a log row of status ``recovered``. One transaction.

        :returns: ``False`` if the dead letter was already resolved (nothing is written then).
        :raises KeyError: no dead letter has this id.
        """
        letters = self.tables.dead_letters
        resolved = now()
        with self.engine.begin() as conn:
            letter = dead_letter_row(conn, letters, dead_letter_id)
            claimed = conn.execute(
                update(letters)
                .where(letters.c.id == dead_letter_id, letters.c.resolved_at.is_(None))
                .values(resolved_at=resolved, resolved_run_id=run_id)
            ).rowcount
            if not claimed:
                return False
            if record is not None:
                table = self._record_table(letter.resource)
                upsert_records(conn, table, letter.tenant_id, run_id, [record], resolved)
            add_to_log(
                conn,
                self.tables.sync_log,
                run_id,
                letter.credential,
                letter.resource,
                resolved,
                RunCounts(records_recovered=1),
                new_status=RECOVERED,
            )
        return True

    # -- reads that span several tables -----------------------------------------------------------

    def run_totals(
        self, run_id: str, *, max_recovery_attempts: int, credentials: Iterable[str] | None = None
    ) -> dict[str, CredentialTotals]:
        """What ``run_id`` did, per credential: everything its report needs, read in one place.

        :param max_recovery_attempts: the recovery's ``max_attempts``: a dead letter that failed that
            many times needs a person (see :meth:`count_dead_letters_needing_attention`).
        :param credentials: the credentials to report on, in this order, with zero counts for one
            the run has no log row of; by default those it has rows of, sorted.
        """
        rows = self.get_run_log(run_id)
        wanted = sorted({row.credential for row in rows}) if credentials is None else list(credentials)
        totals: dict[str, CredentialTotals] = {}
        for credential in wanted:
            mine = [row for row in rows if row.credential == credential]
            status = self.get_credential_status(credential)
            totals[credential] = CredentialTotals(
                credential=credential,
                counts=RunCounts.total(mine),
                resources={row.resource: row.status for row in mine},
                credential_status=None if status is None else status.status,
                open_dead_letters=self.count_unresolved_dead_letters(credential),
                needs_attention=self.count_dead_letters_needing_attention(
                    credential, max_attempts=max_recovery_attempts
                ),
                interrupted=tuple(self.interrupted_runs(credential, by_run_id=run_id)),
            )
        return totals
