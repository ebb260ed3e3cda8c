"""The tables of the sync store, all named ``<prefix>_...`` (default prefix ``servicetitan``).

Bump :data:`SCHEMA_VERSION` whenever a table changes, and add the step from the previous version to
:mod:`~airflow_provider_servicetitan.storage.migrations`: the version row is how an existing
database says what it holds, and ``SyncStore.create_tables`` upgrades it step by step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, Index, Integer, MetaData, String, Table, Text

from airflow_provider_servicetitan.catalog import RESOURCES
from airflow_provider_servicetitan.storage.models import RUN_COUNTERS
from airflow_provider_servicetitan.storage.types import AUTOINCREMENT_ID, JSON_DOCUMENT, UtcDateTime

SCHEMA_VERSION = 2
"""Version of the table layout this code writes and reads (2: run owners and heartbeats, the
``interrupted`` status, re-exports, the number a dead letter can be fetched again by)."""

CREDENTIAL_STATUSES = ("ok", "degraded", "needs_attention")

# Lower-case, and short enough that the longest derived name stays within PostgreSQL's 63 characters.
_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,29}")
_NAME = String(250)  # Airflow connection ids and run ids are at most 250 characters.
_RESOURCE_NAME = String(64)


@dataclass(frozen=True)
class Tables:
    """Every table of one store, bound to one ``MetaData``."""

    metadata: MetaData
    schema_version: Table
    records: Mapping[str, Table]
    sync_state: Table
    dead_letters: Table
    sync_log: Table
    credential_status: Table


def build_tables(prefix: str) -> Tables:
    """Describe the tables for ``prefix``.

    :raises ValueError: ``prefix`` is not a lower-case identifier of at most 30 characters.
    """
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"table prefix {prefix!r} is invalid: use a lower-case letter followed by up to 29 letters, digits or '_'"
        )
    metadata = MetaData()
    return Tables(
        metadata=metadata,
        schema_version=Table(
            f"{prefix}_schema_version",
            metadata,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("version", Integer, nullable=False),
            Column("updated_at", UtcDateTime, nullable=False),
            CheckConstraint("id = 1", name=f"ck_{prefix}_schema_version_single_row"),
        ),
        records={name: _record_table(metadata, prefix, name) for name in RESOURCES},
        sync_state=Table(
            f"{prefix}_sync_state",
            metadata,
            Column("credential", _NAME, primary_key=True),
            Column("resource", _RESOURCE_NAME, primary_key=True),
            Column("tenant_id", BigInteger, nullable=False),
            Column("continue_from", Text, nullable=True),
            Column("last_modified_on", UtcDateTime, nullable=True),
            Column("updated_at", UtcDateTime, nullable=False),
            # The run whose re-export last restarted this checkpoint: a retry of that run resumes it.
            Column("reexport_run_id", _NAME, nullable=True),
        ),
        dead_letters=_dead_letter_table(metadata, prefix),
        sync_log=_sync_log_table(metadata, prefix),
        credential_status=Table(
            f"{prefix}_credential_status",
            metadata,
            Column("credential", _NAME, primary_key=True),
            Column("status", String(32), nullable=False),
            Column("since", UtcDateTime, nullable=False),
            Column("reason", Text, nullable=True),
            Column("secret_fingerprint", String(128), nullable=True),
            Column("updated_at", UtcDateTime, nullable=False),
            CheckConstraint(
                "status IN ({})".format(", ".join(f"'{status}'" for status in CREDENTIAL_STATUSES)),
                name=f"ck_{prefix}_credential_status_status",
            ),
        ),
    )


def _sync_log_table(metadata: MetaData, prefix: str) -> Table:
    table = Table(
        f"{prefix}_sync_log",
        metadata,
        Column("run_id", _NAME, primary_key=True),
        Column("credential", _NAME, primary_key=True),
        Column("resource", _RESOURCE_NAME, primary_key=True),
        Column("status", String(32), nullable=False),
        *(Column(name, BigInteger, nullable=False, default=0) for name in RUN_COUNTERS),
        Column("started_at", UtcDateTime, nullable=False),
        Column("finished_at", UtcDateTime, nullable=True),
        Column("message", Text, nullable=True),
        # Who runs it and its last sign of life, to tell a dead run from a live one (sync.liveness).
        Column("owner_host", String(255), nullable=True),
        Column("owner_scope", String(64), nullable=True),
        Column("owner_pid", BigInteger, nullable=True),
        Column("heartbeat_at", UtcDateTime, nullable=True),
        # The run whose sync found this one's process gone and marked it ``interrupted``.
        Column("interrupted_by", _NAME, nullable=True),
    )
    # What the next sync (the running rows of a resource) and the report (the rows a run closed) look up.
    Index(f"ix_{prefix}_sync_log_status", table.c.credential, table.c.resource, table.c.status)
    Index(f"ix_{prefix}_sync_log_interrupted_by", table.c.credential, table.c.interrupted_by)
    return table


def _record_table(metadata: MetaData, prefix: str, resource: str) -> Table:
    return Table(
        f"{prefix}_{resource}",
        metadata,
        Column("tenant_id", BigInteger, primary_key=True, autoincrement=False),
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("modified_on", UtcDateTime, nullable=False),
        Column("active", Boolean, nullable=False),
        Column("deleted", Boolean, nullable=False),
        Column("payload", JSON_DOCUMENT, nullable=False),
        Column("synced_at", UtcDateTime, nullable=False),
        Column("run_id", _NAME, nullable=False),
        Index(f"ix_{prefix}_{resource}_modified_on", "tenant_id", "modified_on"),
    )


def _dead_letter_table(metadata: MetaData, prefix: str) -> Table:
    table = Table(
        f"{prefix}_dead_letters",
        metadata,
        Column("id", AUTOINCREMENT_ID, primary_key=True, autoincrement=True),
        Column("credential", _NAME, nullable=False),
        Column("tenant_id", BigInteger, nullable=False),
        Column("resource", _RESOURCE_NAME, nullable=False),
        Column("record_id", Text, nullable=True),
        # The number the record can be fetched again by (storage.records.record_number); NULL: none,
        # so the letter needs a person at once.
        Column("record_number", BigInteger, nullable=True),
        # sha256 of the record id, or of the raw payload when there is no id: what makes a re-park
        # of the same bad record update its open dead letter instead of adding another.
        Column("dedupe_key", String(64), nullable=False),
        Column("raw", Text, nullable=False),
        Column("error_class", String(250), nullable=False),
        Column("message", Text, nullable=False),
        Column("trace_id", Text, nullable=True),
        Column("attempts", Integer, nullable=False, default=0),
        Column("first_seen", UtcDateTime, nullable=False),
        Column("last_seen", UtcDateTime, nullable=False),
        Column("resolved_at", UtcDateTime, nullable=True),
        Column("resolved_run_id", _NAME, nullable=True),
    )
    Index(
        f"ux_{prefix}_dead_letters_open",
        table.c.credential,
        table.c.tenant_id,
        table.c.resource,
        table.c.dedupe_key,
        unique=True,
        postgresql_where=table.c.resolved_at.is_(None),
        sqlite_where=table.c.resolved_at.is_(None),
    )
    return table
