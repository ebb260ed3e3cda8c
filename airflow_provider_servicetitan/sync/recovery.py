"""Re-process parked records one by one (no Airflow import).

Each unresolved dead letter of a credential is re-fetched by id through the list endpoint (50 ids a
request, ``active=Any``) and validated again on its own. A record the list no longer returns and
whose parked payload says it was deleted is closed without storing anything: list endpoints never
return deleted records, and deleted is its final state. Success stores the record and resolves the
letter in one transaction, counted as recovered in the run's log; failure adds an attempt. After
``max_attempts`` failed attempts a letter stays parked and is reported as needing a person.
Running recovery again is always safe: resolved letters are never touched twice.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Literal

from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.client.resources import get_resource
from airflow_provider_servicetitan.errors import RecordValidationError
from airflow_provider_servicetitan.storage.models import DeadLetter
from airflow_provider_servicetitan.storage.store import SyncStore
from airflow_provider_servicetitan.sync.records import validate_record

log = logging.getLogger(__name__)

RecoveryStatus = Literal["success", "partial", "failure"]


@dataclass
class RecoveryResult:
    """Outcome of one recovery pass for one credential (the design's RecoveryResult)."""

    credential: str
    attempted: int = 0
    recovered: int = 0
    failed: int = 0
    needs_attention: int = 0

    @property
    def status(self) -> RecoveryStatus:
        """``success`` when nothing is left to do, ``failure`` when nothing could be recovered."""
        if self.failed == 0:
            return "success"
        return "partial" if self.recovered else "failure"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "status": self.status}


def _numeric_id(letter: DeadLetter) -> int | None:
    text = (letter.record_id or "").strip()
    return int(text) if text.isdigit() else None


def _parked_as_deleted(letter: DeadLetter) -> bool:
    """Whether the parked payload says the record was deleted upstream."""
    try:
        raw = json.loads(letter.raw)
    except ValueError:
        return False
    return isinstance(raw, dict) and raw.get("deleted") is True


def recover_dead_letters(
    client: ServiceTitanClient,
    store: SyncStore,
    *,
    credential: str,
    run_id: str,
    max_attempts: int = 3,
) -> RecoveryResult:
    """Try every open dead letter of ``credential`` that has fewer than ``max_attempts`` attempts."""
    result = RecoveryResult(credential=credential)
    by_resource: dict[str, list[DeadLetter]] = defaultdict(list)
    for letter in store.unresolved_dead_letters(credential, max_attempts=max_attempts):
        by_resource[letter.resource].append(letter)
    for resource, letters in by_resource.items():
        _recover_resource(client, store, resource, letters, run_id, result)
    result.needs_attention = store.count_unresolved_dead_letters(credential, min_attempts=max_attempts)
    log.info(
        "Recovery for %s: %d attempted, %d recovered, %d failed, %d need a person (status %s)",
        credential,
        result.attempted,
        result.recovered,
        result.failed,
        result.needs_attention,
        result.status,
    )
    return result


def _recover_resource(
    client: ServiceTitanClient,
    store: SyncStore,
    resource: str,
    letters: list[DeadLetter],
    run_id: str,
    result: RecoveryResult,
) -> None:
    catalogue_entry = get_resource(resource)
    wanted = {record_id for letter in letters if (record_id := _numeric_id(letter)) is not None}
    fetched = {record.get("id"): record for record in client.get_by_ids(resource, sorted(wanted))}
    for letter in letters:
        result.attempted += 1
        record_id = _numeric_id(letter)
        if record_id is None:
            problem = "the record has no usable id, so it cannot be fetched again: a person must look at it"
            store.fail_dead_letter(letter.id, RecordValidationError.__name__, problem)
            result.failed += 1
            continue
        if record_id not in fetched:
            if _parked_as_deleted(letter) and store.resolve_dead_letter(letter.id, None, run_id=run_id):
                # List endpoints never return deleted records: its final state is known, nothing to store.
                result.recovered += 1
                continue
            store.fail_dead_letter(letter.id, "NotFoundError", f"{resource} {record_id} is no longer returned")
            result.failed += 1
            continue
        try:
            record = validate_record(catalogue_entry, fetched[record_id])
        except RecordValidationError as error:
            store.fail_dead_letter(letter.id, type(error).__name__, str(error))
            result.failed += 1
            continue
        if store.resolve_dead_letter(letter.id, record, run_id=run_id):
            result.recovered += 1
