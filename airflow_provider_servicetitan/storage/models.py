"""What goes into the sync store and what comes out of it: plain frozen dataclasses."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from airflow_provider_servicetitan.errors import RecordValidationError

CredentialState = Literal["ok", "degraded", "needs_attention"]
RunStatus = Literal["success", "partial", "failed", "skipped"]
"""How a (run, credential, resource) ended; its log row says ``running`` until then."""
RUN_STATUSES: tuple[RunStatus, ...] = ("success", "partial", "failed", "skipped")
RUNNING = "running"
INTERRUPTED = "interrupted"
"""A ``running`` row whose process was found gone by a later sync: it will never finish."""
RECOVERED = "recovered"
"""A row that only counts records the recovery stored: no sync of the resource ran in that run."""


def raw_text(raw: object) -> str:
    """The raw payload of a bad record as text: kept as is when it is text, else as JSON.

    Nothing is lost: values JSON cannot hold (``NaN``, odd types) are written in a readable form.
    """
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="backslashreplace")
    return json.dumps(raw, ensure_ascii=False, default=repr)


@dataclass(frozen=True)
class DeadLetterIn:
    """A record that could not be stored, to be parked.

    :param record_id: the record's id as text, even a malformed one; ``None`` when it had none.
    :param raw: the record as received (see :func:`raw_text`).
    :param error_class: name of the exception that rejected it.
    :param message: what was wrong.
    :param trace_id: ServiceTitan ``traceId`` of the answer that carried it, if known.
    """

    record_id: str | None
    raw: str
    error_class: str
    message: str
    trace_id: str | None = None

    @classmethod
    def from_error(cls, raw: object, error: Exception, *, trace_id: str | None = None) -> DeadLetterIn:
        """Build from the raw record and the error; the id comes from a ``RecordValidationError``."""
        record_id = error.record_id if isinstance(error, RecordValidationError) else None
        return cls(
            record_id=None if record_id is None else raw_text(record_id),
            raw=raw_text(raw),
            error_class=type(error).__name__,
            message=str(error),
            trace_id=trace_id,
        )


@dataclass(frozen=True)
class DeadLetter:
    """A parked record as stored. ``attempts`` counts failed recovery attempts (0 when parked).

    ``record_number`` is the number recovery fetches the record again by; ``None`` when its id names
    none (missing or unusable): such a letter needs a person from the start.
    """

    id: int
    credential: str
    tenant_id: int
    resource: str
    record_id: str | None
    record_number: int | None
    raw: str
    error_class: str
    message: str
    trace_id: str | None
    attempts: int
    first_seen: datetime
    last_seen: datetime
    resolved_at: datetime | None
    resolved_run_id: str | None


@dataclass(frozen=True)
class Checkpoint:
    """Where the sync of one (credential, resource) resumes.

    :param continue_from: the export feed's last committed ``continueFrom`` token, if any.
    :param last_modified_on: the newest ``modifiedOn`` committed so far.
    :param tenant_id: the tenant the checkpoint was taken for.
    :param reexport_run_id: the run whose re-export last restarted it, if any.
    """

    credential: str
    resource: str
    tenant_id: int
    continue_from: str | None
    last_modified_on: datetime | None
    updated_at: datetime
    reexport_run_id: str | None


@dataclass(frozen=True)
class RunOwner:
    """The process that runs a sync, as its log row remembers it.

    :param host: the host name, for people.
    :param scope: where ``pid`` means something: same scope, same process table (same host, boot
        and PID namespace), so the PID can be looked up there.
    :param pid: the process id.
    """

    host: str
    scope: str
    pid: int


@dataclass(frozen=True)
class RunCounts:
    """The counters of the sync log: the one place their names are spelled.

    The log table has one column per field (:data:`RUN_COUNTERS`), every write adds to them, and
    :class:`RunLog` and :class:`CredentialTotals` read them under the same names.
    """

    pages: int = 0
    records_processed: int = 0
    records_successful: int = 0
    records_failed: int = 0
    records_recovered: int = 0
    retries: int = 0
    breaker_events: int = 0

    @classmethod
    def total(cls, counts: Iterable[RunCounts]) -> RunCounts:
        """The sum of ``counts``, counter by counter."""
        sums = dict.fromkeys(RUN_COUNTERS, 0)
        for one in counts:
            for name in RUN_COUNTERS:
                sums[name] += getattr(one, name)
        return cls(**sums)

    def counters(self) -> dict[str, int]:
        """Only the counters, by name (a :class:`RunLog` leaves its other fields out)."""
        return {name: getattr(self, name) for name in RUN_COUNTERS}


RUN_COUNTERS: tuple[str, ...] = tuple(field.name for field in fields(RunCounts))
"""The names of the sync log's counters, in table order."""


@dataclass(frozen=True, kw_only=True)
class RunLog(RunCounts):
    """The counts of one (run, credential, resource) (the counters are those of :class:`RunCounts`).

    ``status`` is ``running``, a :data:`RunStatus`, :data:`INTERRUPTED` (then ``finished_at`` is
    when that was found and ``interrupted_by`` the run that found it) or :data:`RECOVERED`. The
    owner and ``heartbeat_at`` (updated at every committed page) tell whether a running row's
    process is still there.
    """

    run_id: str
    credential: str
    resource: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    message: str | None
    owner_host: str | None
    owner_scope: str | None
    owner_pid: int | None
    heartbeat_at: datetime | None
    interrupted_by: str | None


@dataclass(frozen=True)
class CredentialTotals:
    """One credential's part of a run, everything the run's report says about it.

    :param counts: the counters of the credential's log rows in the run, summed.
    :param resources: how each resource's row of the run stands (``success``, ``running``, ...).
    :param credential_status: the credential's last recorded health, ``None`` if none is recorded.
    :param open_dead_letters: its dead letters not resolved yet (of any run).
    :param needs_attention: those of them only a person can resolve: no usable id, or recovery
        failed them the given number of times.
    :param interrupted: the earlier runs' rows this run's syncs found left ``running`` by a process
        that is gone, by resource then start.
    """

    credential: str
    counts: RunCounts
    resources: Mapping[str, str]
    credential_status: str | None
    open_dead_letters: int
    needs_attention: int
    interrupted: tuple[RunLog, ...]


@dataclass(frozen=True)
class CredentialStatus:
    """Health of one credential. ``since`` is when it entered ``status``."""

    credential: str
    status: str
    since: datetime
    reason: str | None
    secret_fingerprint: str | None
    updated_at: datetime


@dataclass(frozen=True)
class StoredRecord:
    """One synced record as stored."""

    tenant_id: int
    id: int
    modified_on: datetime
    active: bool
    deleted: bool
    payload: dict[str, Any]
    synced_at: datetime
    run_id: str
