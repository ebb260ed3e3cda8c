"""The sync store: records, checkpoints, dead letters, run log and credential health (SQLAlchemy, no Airflow)."""

from airflow_provider_servicetitan.storage.models import (
    INTERRUPTED,
    RECOVERED,
    RUN_COUNTERS,
    RUNNING,
    Checkpoint,
    CredentialState,
    CredentialStatus,
    CredentialTotals,
    DeadLetter,
    DeadLetterIn,
    RunCounts,
    RunLog,
    RunOwner,
    RunStatus,
    StoredRecord,
    raw_text,
)
from airflow_provider_servicetitan.storage.schema import SCHEMA_VERSION
from airflow_provider_servicetitan.storage.store import SchemaVersionError, SyncStore

__all__ = [
    "INTERRUPTED",
    "RECOVERED",
    "RUNNING",
    "RUN_COUNTERS",
    "SCHEMA_VERSION",
    "Checkpoint",
    "CredentialState",
    "CredentialStatus",
    "CredentialTotals",
    "DeadLetter",
    "DeadLetterIn",
    "RunCounts",
    "RunLog",
    "RunOwner",
    "RunStatus",
    "SchemaVersionError",
    "StoredRecord",
    "SyncStore",
    "raw_text",
]
