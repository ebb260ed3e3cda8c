"""The sandbox's records: one table per (tenant, resource), with the changes made through the admin API."""

from __future__ import annotations

import bisect
import dataclasses
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from airflow_provider_servicetitan.sandbox.cursor import Position
from airflow_provider_servicetitan.sandbox.data import (
    GENERATORS,
    Record,
    References,
    generate_tenant,
    next_id,
    references,
)


class MutationError(ValueError):
    """A mutation that cannot be applied (unknown id, record not eligible, bad arguments)."""


class Action(StrEnum):
    """What ``POST /_sandbox/mutate`` does to records."""

    MODIFY = "modify"
    CREATE = "create"
    DEACTIVATE = "deactivate"
    DELETE = "delete"


@dataclass(frozen=True)
class ExportPage:
    """One page of an export feed."""

    records: list[Record]
    last: Position
    has_more: bool


class ResourceTable:
    """Records of one resource of one tenant, by id and in export order (modifiedOn, id)."""

    def __init__(self, records: Iterable[Record]) -> None:
        # Ids only grow (generation and creation both append), so the dict stays in id order.
        self._by_id = {record.id: record for record in records}
        self._order = sorted((record.modified_ms, record.id) for record in self._by_id.values())

    def records(self) -> Iterable[Record]:
        """Every record, deleted ones included, by id."""
        return self._by_id.values()

    def get(self, record_id: int) -> Record | None:
        return self._by_id.get(record_id)

    def last_id(self) -> int:
        return next(reversed(self._by_id))

    def put(self, record: Record) -> None:
        """Insert or replace ``record``, keeping the export order."""
        old = self._by_id.get(record.id)
        if old is not None:
            del self._order[bisect.bisect_left(self._order, (old.modified_ms, old.id))]
        self._by_id[record.id] = record
        bisect.insort(self._order, (record.modified_ms, record.id))

    def export_page(self, after: Position, limit: int, visible_until_ms: int | None) -> ExportPage:
        """Up to ``limit`` records strictly after ``after``, hiding those modified after
        ``visible_until_ms`` (``None``: hide nothing)."""
        start = bisect.bisect_right(self._order, after)
        end = len(self._order)
        if visible_until_ms is not None:
            end = bisect.bisect_right(self._order, (visible_until_ms, sys.maxsize))
        stop = max(start, min(start + limit, end))
        keys = self._order[start:stop]
        return ExportPage(
            records=[self._by_id[record_id] for _, record_id in keys],
            last=keys[-1] if keys else after,
            has_more=stop < end,
        )


class DataStore:
    """Every table of the sandbox, generated from the seed, and the mutations applied to them."""

    def __init__(self, seed: int, tenant_ids: Sequence[int], records: int) -> None:
        self._rng = random.Random(f"{seed}:mutations")  # noqa: S311
        self._tables: dict[tuple[int, str], ResourceTable] = {}
        for tenant_id in tenant_ids:
            for resource, rows in generate_tenant(seed, tenant_id, records).items():
                self._tables[tenant_id, resource] = ResourceTable(rows)

    def table(self, tenant_id: int, resource: str) -> ResourceTable:
        """The table of ``resource`` for ``tenant_id``.

        :raises KeyError: unknown tenant or resource.
        """
        return self._tables[tenant_id, resource]

    def mutate(
        self,
        tenant_id: int,
        resource: str,
        action: Action,
        *,
        ids: Sequence[int] | None,
        count: int | None,
        now_ms: int,
    ) -> list[Record]:
        """Apply ``action`` to the records ``ids``, or to ``count`` records picked by the seeded RNG
        (``create`` makes ``count`` new records). Changed records get ``modifiedOn = now_ms``.

        :raises KeyError: unknown tenant or resource.
        :raises MutationError: the mutation cannot be applied.
        """
        table = self.table(tenant_id, resource)
        if ids is not None and count is not None:
            raise MutationError("give ids or count, not both")
        refs = references({name: list(self.table(tenant_id, name).records()) for name in GENERATORS})
        if action is Action.CREATE:
            if ids is not None:
                raise MutationError("create takes a count, not ids")
            return [self._create(resource, table, refs, now_ms) for _ in range(count or 1)]
        changed = [
            self._change(resource, action, record, refs, now_ms) for record in self._targets(table, action, ids, count)
        ]
        for record in changed:
            table.put(record)
        return changed

    def _targets(
        self, table: ResourceTable, action: Action, ids: Sequence[int] | None, count: int | None
    ) -> list[Record]:
        if ids is not None:
            targets = []
            for record_id in ids:
                record = table.get(record_id)
                if record is None:
                    raise MutationError(f"no record with id {record_id}")
                if not _eligible(action, record):
                    state = "deleted" if record.deleted else "inactive"
                    raise MutationError(f"cannot {action} record {record_id}: it is {state}")
                targets.append(record)
            return targets
        if count is None:
            raise MutationError(f"{action} needs ids or count")
        eligible = [record for record in table.records() if _eligible(action, record)]
        if count > len(eligible):
            raise MutationError(f"cannot {action} {count} records: only {len(eligible)} are eligible")
        return sorted(self._rng.sample(eligible, count), key=lambda record: record.id)

    def _change(self, resource: str, action: Action, record: Record, refs: References, now_ms: int) -> Record:
        if action is Action.DEACTIVATE:
            return dataclasses.replace(record, active=False, modified_ms=now_ms)
        if action is Action.DELETE:
            return dataclasses.replace(record, active=False, deleted=True, modified_ms=now_ms)
        links = {key: value for key, value in record.body.items() if key.endswith("Id")}
        body = {**GENERATORS[resource](self._rng, refs), **links}
        return dataclasses.replace(record, body=body, modified_ms=now_ms)

    def _create(self, resource: str, table: ResourceTable, refs: References, now_ms: int) -> Record:
        record = Record(
            id=next_id(self._rng, table.last_id()),
            created_ms=now_ms,
            modified_ms=now_ms,
            active=True,
            deleted=False,
            body=GENERATORS[resource](self._rng, refs),
        )
        table.put(record)
        return record


def _eligible(action: Action, record: Record) -> bool:
    return not record.deleted and (action is not Action.DEACTIVATE or record.active)
