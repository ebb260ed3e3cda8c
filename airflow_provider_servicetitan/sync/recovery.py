"""Re-process parked records one by one (no Airflow import).

Each unresolved dead letter of a credential is re-fetched by the number its id names (``123`` or
``"ST-123"``, see :func:`~airflow_provider_servicetitan.storage.records.record_number`) through the
list endpoint (50 ids a request, ``active=Any``) and validated again on its own. A record the list
no longer returns and whose parked payload says it was deleted is closed without storing anything:
list endpoints never return deleted records, and deleted is its final state. Success stores the
record and resolves the letter in one transaction, counted as recovered in the run's log; failure
adds an attempt. A letter whose id names no record can never be fetched: it needs a person from
the start and is not attempted; so does a letter after ``max_attempts`` failed attempts. Both stay
parked and are counted in ``needs_attention``. Running recovery again is always safe: resolved
letters are never touched twice.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Literal

from airflow_provider_servicetitan.catalog import Resource, get_resource
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.errors import RecordValidationError
from airflow_provider_servicetitan.storage.models import DeadLetter
from airflow_provider_servicetitan.storage.records import record_number
from airflow_provider_servicetitan.storage.store import SyncStore
from airflow_provider_servicetitan.sync.records import validate_record

log = logging.getLogger(__name__)

RecoveryStatus = Literal["success", "partial", "failure"]
_Outcome = Literal["recovered", "failed", "resolved_elsewhere"]


@dataclass
class RecoveryResult:
    """Outcome of one recovery pass for one credential (the design's RecoveryResult).

    ``needs_attention`` counts the open letters only a person can resolve after this pass: those
    whose id names no record, and those recovery failed ``max_attempts`` times.
    """

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
    """Try every open dead letter of ``credential`` that can be fetched and has fewer than ``max_attempts`` attempts."""
    result = RecoveryResult(credential=credential)
    by_resource: dict[str, dict[int, list[DeadLetter]]] = defaultdict(lambda: defaultdict(list))
    for letter in store.unresolved_dead_letters(credential, max_attempts=max_attempts, fetchable=True):
        if letter.record_number is not None:
            by_resource[letter.resource][letter.record_number].append(letter)
    for resource, letters in by_resource.items():
        _recover_resource(client, store, resource, letters, run_id, result)
    result.needs_attention = store.count_dead_letters_needing_attention(credential, max_attempts=max_attempts)
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
    letters: dict[int, list[DeadLetter]],
    run_id: str,
    result: RecoveryResult,
) -> None:
    """Re-fetch the records ``letters`` name (by number) and resolve or fail each letter."""
    catalogue_entry = get_resource(resource)
    fetched: dict[int, object] = {}
    for record in client.get_by_ids(resource, sorted(letters)):
        number = record_number(record.get("id")) if isinstance(record, dict) else None
        if number is not None:
            fetched.setdefault(number, record)
    for number, parked in letters.items():
        for letter in parked:
            result.attempted += 1
            outcome = _recover_one(store, catalogue_entry, letter, number, fetched, run_id)
            if outcome == "recovered":
                result.recovered += 1
            elif outcome == "failed":
                result.failed += 1


def _recover_one(
    store: SyncStore,
    catalogue_entry: Resource,
    letter: DeadLetter,
    number: int,
    fetched: dict[int, object],
    run_id: str,
) -> _Outcome:
    """Resolve ``letter`` from the record fetched for ``number``, or record a failed attempt."""
    if number not in fetched:
        if _parked_as_deleted(letter) and store.resolve_dead_letter(letter.id, None, run_id=run_id):
            # List endpoints never return deleted records: its final state is known, nothing to store.
            return "recovered"
        store.fail_dead_letter(letter.id, "NotFoundError", f"{catalogue_entry.name} {number} is no longer returned")
        return "failed"
    try:
        record = validate_record(catalogue_entry, fetched[number])
    except RecordValidationError as error:
        store.fail_dead_letter(letter.id, type(error).__name__, str(error))
        return "failed"
    return "recovered" if store.resolve_dead_letter(letter.id, record, run_id=run_id) else "resolved_elsewhere"
