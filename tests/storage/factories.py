"""Small builders for storage tests: records go through the real validation, like in a sync."""

from __future__ import annotations

from typing import Any

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.storage import Checkpoint, DeadLetter, DeadLetterIn, StoredRecord, SyncStore
from airflow_provider_servicetitan.storage.records import ValidRecord
from airflow_provider_servicetitan.sync.records import validate_record

CREDENTIAL = "servicetitan_default"
TENANT = 1001
RUN = "scheduled__2024-03-01T00:00:00+00:00"


def record(record_id: int, modified_on: str, resource: str = "customers", **fields: Any) -> ValidRecord:
    return validate_record(get_resource(resource), {"id": record_id, "modifiedOn": modified_on, **fields})


def dead_letter(record_id: str | None = "7", raw: str = '{"id": 7}', message: str = "bad record") -> DeadLetterIn:
    return DeadLetterIn(record_id=record_id, raw=raw, error_class="RecordValidationError", message=message)


def commit(
    store: SyncStore,
    records: list[ValidRecord],
    dead_letters: list[DeadLetterIn] | None = None,
    *,
    continue_from: str | None = "token-1",
    resource: str = "customers",
    run_id: str = RUN,
    tenant_id: int = TENANT,
    credential: str = CREDENTIAL,
    restart_checkpoint: bool = False,
) -> None:
    store.commit_page(
        credential=credential,
        tenant_id=tenant_id,
        resource=resource,
        run_id=run_id,
        records=records,
        dead_letters=dead_letters or [],
        continue_from=continue_from,
        restart_checkpoint=restart_checkpoint,
    )


def stored_record(
    store: SyncStore, record_id: int, *, tenant_id: int = TENANT, resource: str = "customers"
) -> StoredRecord:
    found = store.get_record(tenant_id, resource, record_id)
    assert found is not None, f"{resource} record {record_id} of tenant {tenant_id} is not stored"
    return found


def saved_checkpoint(store: SyncStore, resource: str = "customers") -> Checkpoint:
    found = store.get_checkpoint(CREDENTIAL, resource)
    assert found is not None, f"no checkpoint for {CREDENTIAL}/{resource}"
    return found


def stored_letter(store: SyncStore, dead_letter_id: int) -> DeadLetter:
    found = store.get_dead_letter(dead_letter_id)
    assert found is not None, f"no dead letter {dead_letter_id}"
    return found
