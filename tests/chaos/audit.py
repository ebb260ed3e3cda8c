"""The warehouse held against the sandbox truth: lost and duplicated records, and a row's figures."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select

from airflow_provider_servicetitan.sandbox import SandboxServer
from airflow_provider_servicetitan.storage.store import SyncStore

Version = tuple[str, bool, bool]
"""What makes a record up to date: ``modifiedOn``, ``active``, ``deleted``."""


@dataclass(frozen=True)
class Audit:
    """One comparison of the warehouse with the truth.

    :param expected: records of the truth (deleted ones included: exports carry them).
    :param in_warehouse: rows in the warehouse for the same tenants and resources.
    :param lost: truth records missing from the warehouse or stored at another version, and not
        parked as an open dead letter either.
    :param duplicates: rows beyond the first per (tenant, id), plus open dead letters of records
        that are stored as well.
    :param unexpected: rows of records the truth does not have.
    :param dead_letters: open dead letters of the audited credentials.
    """

    expected: int
    in_warehouse: int
    lost: int
    duplicates: int
    unexpected: int
    dead_letters: int


def truth(sandbox: SandboxServer, tenant_id: int, resource: str) -> dict[int, Version]:
    return {
        row["id"]: (row["modifiedOn"], row["active"], row["deleted"])
        for row in sandbox.admin.truth(tenant_id, resource)
    }


def stored(store: SyncStore, tenant_id: int, resource: str) -> dict[int, Version]:
    table = store.tables.records[resource]
    query = select(table.c.id, table.c.payload, table.c.active, table.c.deleted).where(table.c.tenant_id == tenant_id)
    with store.engine.connect() as conn:
        return {row.id: (row.payload["modifiedOn"], row.active, row.deleted) for row in conn.execute(query)}


def audit(
    sandbox: SandboxServer,
    store: SyncStore,
    tenants: Iterable[int],
    resources: Iterable[str],
    credentials: Iterable[str] = (),
) -> Audit:
    """Compare every audited tenant and resource; count the open dead letters of ``credentials``."""
    expected = in_warehouse = lost = duplicates = unexpected = 0
    resources = list(resources)
    parked = _open_dead_letter_ids(store)
    for tenant_id in tenants:
        for resource in resources:
            want, have = truth(sandbox, tenant_id, resource), stored(store, tenant_id, resource)
            parked_here = parked.get((tenant_id, resource), set())
            expected += len(want)
            in_warehouse += _row_count(store, tenant_id, resource)
            lost += sum(1 for key, version in want.items() if have.get(key) != version and str(key) not in parked_here)
            duplicates += _extra_rows(store, tenant_id, resource) + sum(1 for key in have if str(key) in parked_here)
            unexpected += len(have.keys() - want.keys())
    letters = sum(store.count_unresolved_dead_letters(credential) for credential in credentials)
    return Audit(expected, in_warehouse, lost, duplicates, unexpected, letters)


def _row_count(store: SyncStore, tenant_id: int, resource: str) -> int:
    table = store.tables.records[resource]
    with store.engine.connect() as conn:
        count: int = conn.execute(select(func.count()).where(table.c.tenant_id == tenant_id)).scalar_one()
    return count


def _extra_rows(store: SyncStore, tenant_id: int, resource: str) -> int:
    """Rows beyond the first for any (tenant, id): zero unless the primary key stopped protecting us."""
    table = store.tables.records[resource]
    per_key = (
        select(func.count().label("copies"))
        .where(table.c.tenant_id == tenant_id)
        .group_by(table.c.tenant_id, table.c.id)
        .having(func.count() > 1)
        .subquery()
    )
    with store.engine.connect() as conn:
        extra: int = conn.execute(select(func.coalesce(func.sum(per_key.c.copies - 1), 0))).scalar_one()
    return int(extra)


def _open_dead_letter_ids(store: SyncStore) -> dict[tuple[int, str], set[str]]:
    letters = store.tables.dead_letters
    query = select(letters.c.tenant_id, letters.c.resource, letters.c.record_id).where(letters.c.resolved_at.is_(None))
    found: dict[tuple[int, str], set[str]] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            found.setdefault((row.tenant_id, row.resource), set()).add(str(row.record_id))
    return found


@dataclass(frozen=True)
class Figures:
    """What a chaos row prints: the audit and what it cost."""

    row: str
    audit: Audit
    token_requests: int
    retries: int
    seconds: float
    note: str = ""

    def line(self) -> str:
        a = self.audit
        text = (
            f"{self.row}: expected={a.expected} in_warehouse={a.in_warehouse} lost={a.lost} "
            f"duplicates={a.duplicates} unexpected={a.unexpected} dead_letters={a.dead_letters} "
            f"token_requests={self.token_requests} retries={self.retries} time={self.seconds:.1f}s"
        )
        return f"{text} ({self.note})" if self.note else text
