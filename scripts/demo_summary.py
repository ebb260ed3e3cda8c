"""What the demo run did, per credential and resource, and whether the warehouse equals the sandbox.

The figures come from the warehouse (sync log, dead letters, records) and the sandbox's admin
endpoints (truth, stats); the alerts from the demo's webhook receiver.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass

from sqlalchemy import func, select

from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES
from airflow_provider_servicetitan.sandbox import SandboxAdmin
from airflow_provider_servicetitan.storage.store import SyncStore

EQUAL = "warehouse equals the sandbox"
Version = tuple[str, bool, bool]
"""What makes a record up to date: ``modifiedOn``, ``active``, ``deleted``."""


@dataclass(frozen=True)
class Credential:
    """A credential of the demo: its connection id, tenant and the faults it runs under."""

    conn_id: str
    tenant_id: int
    faults: str


@dataclass(frozen=True)
class ResourceFigures:
    """One credential's resource: what the run did, and the warehouse held against the truth.

    ``unexplained`` counts the differences no open dead letter (or deleted record whose letter
    recovery closed) accounts for, plus records the sandbox does not have: 0 when all is well.
    """

    resource: str
    records: int
    pages: int
    retries: int
    breaker_events: int
    parked: int
    recovered: int
    open_letters: int
    expected: int
    deleted_closed: int
    unexplained: int


@dataclass(frozen=True)
class Letters:
    """The dead letters of one credential's resource: record numbers of the open and closed ones."""

    parked: int
    open_numbers: frozenset[int]
    open_without_number: int
    closed_numbers: frozenset[int]

    @property
    def open_count(self) -> int:
        return len(self.open_numbers) + self.open_without_number


@dataclass(frozen=True)
class CredentialReport:
    credential: Credential
    status: str
    resources: list[ResourceFigures]
    alerts: int

    @property
    def differs(self) -> bool:
        return any(r.unexplained for r in self.resources)

    @property
    def verdict(self) -> str:
        wrong = [r for r in self.resources if r.unexplained]
        if wrong:
            differences = (f"{r.resource}: {r.unexplained} record(s) missing, outdated or unexpected" for r in wrong)
            return "DIFFERS from the sandbox: " + "; ".join(differences)
        total = sum(r.expected for r in self.resources)
        notes = []
        parked = sum(r.open_letters for r in self.resources)
        if parked:
            notes.append(f"{parked} record(s) parked as dead letters for a person")
        closed = sum(r.deleted_closed for r in self.resources)
        if closed:
            notes.append(f"{closed} deleted record(s) whose dead letter recovery closed (no tombstone stored)")
        return f"{EQUAL} ({total} records)" + (" except " + " and ".join(notes) if notes else "")


def _truth(admin: SandboxAdmin, tenant_id: int, resource: str) -> dict[int, Version]:
    return {row["id"]: (row["modifiedOn"], row["active"], row["deleted"]) for row in admin.truth(tenant_id, resource)}


def _stored(store: SyncStore, tenant_id: int, resource: str) -> dict[int, Version]:
    table = store.tables.records[resource]
    query = select(table.c.id, table.c.payload, table.c.active, table.c.deleted).where(table.c.tenant_id == tenant_id)
    with store.engine.connect() as conn:
        return {row.id: (row.payload["modifiedOn"], row.active, row.deleted) for row in conn.execute(query)}


def _letters(store: SyncStore, credential: str, resource: str) -> Letters:
    letters = store.tables.dead_letters
    query = select(letters.c.record_number, letters.c.resolved_at).where(
        letters.c.credential == credential, letters.c.resource == resource
    )
    with store.engine.connect() as conn:
        rows = list(conn.execute(query))
    still_open = [row.record_number for row in rows if row.resolved_at is None]
    return Letters(
        parked=len(rows),
        open_numbers=frozenset(number for number in still_open if number is not None),
        open_without_number=sum(1 for number in still_open if number is None),
        closed_numbers=frozenset(row.record_number for row in rows if row.resolved_at is not None),
    )


def _logged(store: SyncStore, credential: str, resource: str) -> dict[str, int]:
    """The sync log's counters of one credential's resource, summed over every run of the demo."""
    log = store.tables.sync_log
    names = ("records_successful", "pages", "retries", "breaker_events", "records_recovered")
    query = select(*(func.coalesce(func.sum(log.c[name]), 0) for name in names)).where(
        log.c.credential == credential, log.c.resource == resource
    )
    with store.engine.connect() as conn:
        row = conn.execute(query).one()
    return {name: int(value) for name, value in zip(names, row, strict=True)}


def resource_figures(store: SyncStore, admin: SandboxAdmin, credential: Credential, resource: str) -> ResourceFigures:
    logged = _logged(store, credential.conn_id, resource)
    want, have = _truth(admin, credential.tenant_id, resource), _stored(store, credential.tenant_id, resource)
    letters = _letters(store, credential.conn_id, resource)
    missing = {key for key, version in want.items() if have.get(key) != version} - letters.open_numbers
    deleted_closed = {key for key in missing & letters.closed_numbers if want[key][2] and key not in have}
    # A parked record without an id cannot be matched to the truth: each may account for one missing record.
    unmatched = max(0, len(missing - deleted_closed) - letters.open_without_number)
    return ResourceFigures(
        resource=resource,
        records=logged["records_successful"],
        pages=logged["pages"],
        retries=logged["retries"],
        breaker_events=logged["breaker_events"],
        parked=letters.parked,
        recovered=logged["records_recovered"],
        open_letters=letters.open_count,
        expected=len(want),
        deleted_closed=len(deleted_closed),
        unexplained=unmatched + len(have.keys() - want.keys()),
    )


def credential_reports(
    warehouse_url: str, table_prefix: str, admin: SandboxAdmin, credentials: Sequence[Credential], alerts: list[str]
) -> list[CredentialReport]:
    """Every credential's report; an alert counts for the credential whose connection id it names."""
    reports = []
    with closing(SyncStore(warehouse_url, table_prefix=table_prefix)) as store:
        store.create_tables()  # a run that failed before its first sync leaves none: report "never synced"
        for credential in credentials:
            status = store.get_credential_status(credential.conn_id)
            reports.append(
                CredentialReport(
                    credential,
                    "never synced" if status is None else status.status,
                    [resource_figures(store, admin, credential, r) for r in EXPORTABLE_RESOURCES],
                    sum(1 for alert in alerts if credential.conn_id in alert),
                )
            )
    return reports


_COLUMNS = ("resource", "records", "pages", "retries", "breaker", "parked", "recovered", "open", "sandbox", "differ")


def render(reports: Sequence[CredentialReport], stats: dict[str, object], alerts: list[str]) -> str:
    """The summary the demo prints."""
    lines = [
        "Per credential and resource: records stored by the sync, export pages, in-call retries, circuit breaker",
        "transitions, records parked as dead letters, recovered from them, still open; records in the sandbox, and",
        "records that differ from it without an open dead letter to explain them.",
        "",
    ]
    for report in reports:
        c = report.credential
        lines.append(f"{c.conn_id}  (tenant {c.tenant_id}, faults: {c.faults})  status: {report.status}")
        lines.append("  " + "".join(f"{name:>10}" if i else f"{name:<14}" for i, name in enumerate(_COLUMNS)))
        for r in report.resources:
            cells = (
                r.records,
                r.pages,
                r.retries,
                r.breaker_events,
                r.parked,
                r.recovered,
                r.open_letters,
                r.expected,
                r.unexplained,
            )
            lines.append(f"  {r.resource:<14}" + "".join(f"{cell:>10}" for cell in cells))
        lines.append(f"  alerts received: {report.alerts}")
        lines.append(f"  => {report.verdict}")
        lines.append("")
    faults = stats.get("faults_injected") or {}
    lines.append(
        f"sandbox: {stats.get('requests_total')} requests, {stats.get('token_requests_total')} token requests "
        f"({stats.get('token_requests_issued')} tokens issued), {stats.get('responses_429')} answered 429, "
        f"faults injected: {faults or 'none'}"
    )
    lines.append(f"alerts received by the local webhook: {len(alerts)}")
    lines.extend(f"  - {alert.splitlines()[0][:150]}" for alert in alerts)
    return "\n".join(lines)
