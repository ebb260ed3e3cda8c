"""The sync log: one row per (run, credential, resource), its status, counts, owner and heartbeat.

:func:`add_to_log` takes an open connection: a page's counts are added in the transaction that
commits the page, a recovered record's in the one that stores it (see ``SyncStore``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, update

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.storage.base import StoreBase, now, select_fields
from airflow_provider_servicetitan.storage.dialects import upsert
from airflow_provider_servicetitan.storage.models import (
    INTERRUPTED,
    RUN_COUNTERS,
    RUN_STATUSES,
    RUNNING,
    RunCounts,
    RunLog,
    RunOwner,
    RunStatus,
)

_ROW_KEY = ("run_id", "credential", "resource")


class RunLogs(StoreBase):
    """Starting, finishing and reading the log rows of runs, and closing those whose process is gone."""

    def start_run(self, run_id: str, credential: str, resource: str, owner: RunOwner | None = None) -> None:
        """Mark (run, credential, resource) running, owned by ``owner``, heartbeat now.

        A re-run (Airflow retry) reuses its row and takes it over: the counts of pages committed by
        earlier tries stay, since those pages are not fetched again.
        """
        started = now()
        row = new_log_row(run_id, credential, resource, started)
        row.update(
            owner_host=owner.host if owner else None,
            owner_scope=owner.scope if owner else None,
            owner_pid=owner.pid if owner else None,
            heartbeat_at=started,
        )
        taken_over = ("status", "finished_at", "message", "owner_host", "owner_scope", "owner_pid", "heartbeat_at")
        with self.engine.begin() as conn:
            upsert(
                conn,
                self.tables.sync_log,
                [row],
                conflict=_ROW_KEY,
                update=lambda new: {**{name: new[name] for name in taken_over}, "interrupted_by": None},
            )

    def finish_run(
        self,
        run_id: str,
        credential: str,
        resource: str,
        status: RunStatus,
        message: str | None = None,
        *,
        retries: int = 0,
        breaker_events: int = 0,
    ) -> None:
        """Set the final status and message; ``retries`` and ``breaker_events`` of this try are added."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        log = self.tables.sync_log
        finished = now()
        row = new_log_row(run_id, credential, resource, finished)
        row.update(status=status, finished_at=finished, message=message, retries=retries, breaker_events=breaker_events)
        with self.engine.begin() as conn:
            upsert(
                conn,
                log,
                [row],
                conflict=_ROW_KEY,
                update=lambda new: {
                    "status": new.status,
                    "finished_at": new.finished_at,
                    "message": new.message,
                    "retries": log.c.retries + new.retries,
                    "breaker_events": log.c.breaker_events + new.breaker_events,
                    # It finished after all: whoever took it for dead was wrong.
                    "interrupted_by": None,
                },
            )

    def get_run_log(self, run_id: str, credential: str | None = None) -> list[RunLog]:
        """Every (credential, resource) row of ``run_id`` (only ``credential``'s if given), sorted by
        credential then resource."""
        log = self.tables.sync_log
        query = select_fields(RunLog, log).where(log.c.run_id == run_id)
        if credential is not None:
            query = query.where(log.c.credential == credential)
        return self._fetch_all(RunLog, query.order_by(log.c.credential, log.c.resource))

    def running_runs(self, credential: str, resource: str) -> list[RunLog]:
        """The rows of ``credential`` and ``resource`` that still say ``running``, oldest first."""
        log = self.tables.sync_log
        query = (
            select_fields(RunLog, log)
            .where(log.c.credential == credential, log.c.resource == resource, log.c.status == RUNNING)
            .order_by(log.c.started_at, log.c.run_id)
        )
        return self._fetch_all(RunLog, query)

    def mark_interrupted(self, seen: RunLog, *, by_run_id: str, message: str) -> bool:
        """Close the running row ``seen`` as ``interrupted`` (``finished_at`` = now, ``interrupted_by``).

        Only if the row is as it was read: still running, same owner, same heartbeat. A page
        committed or a retry started since then means its run is alive, and the row is left alone.

        :returns: whether the row was closed.
        """
        log = self.tables.sync_log
        with self.engine.begin() as conn:
            closed = conn.execute(
                update(log)
                .where(
                    log.c.run_id == seen.run_id,
                    log.c.credential == seen.credential,
                    log.c.resource == seen.resource,
                    log.c.status == RUNNING,
                    log.c.owner_scope.is_not_distinct_from(seen.owner_scope),
                    log.c.owner_pid.is_not_distinct_from(seen.owner_pid),
                    log.c.heartbeat_at.is_not_distinct_from(seen.heartbeat_at),
                )
                .values(status=INTERRUPTED, finished_at=now(), message=message, interrupted_by=by_run_id)
            ).rowcount
        return bool(closed)

    def interrupted_runs(self, credential: str, *, by_run_id: str) -> list[RunLog]:
        """The rows of ``credential`` that syncs of ``by_run_id`` found interrupted, by resource then start."""
        log = self.tables.sync_log
        query = (
            select_fields(RunLog, log)
            .where(log.c.credential == credential, log.c.status == INTERRUPTED, log.c.interrupted_by == by_run_id)
            .order_by(log.c.resource, log.c.started_at)
        )
        return self._fetch_all(RunLog, query)


def add_to_log(
    conn: Connection,
    log: Table,
    run_id: str,
    credential: str,
    resource: str,
    at: datetime,
    counts: RunCounts,
    *,
    heartbeat: bool = False,
    new_status: str = RUNNING,
) -> None:
    """Add ``counts`` to the run's row; a row made here gets ``new_status`` (finished unless running).

    :param heartbeat: a sign of life of the run's sync: set its ``heartbeat_at`` to ``at``.
    """
    row = new_log_row(run_id, credential, resource, at)
    row.update(counts.counters(), status=new_status, finished_at=None if new_status == RUNNING else at)
    if heartbeat:
        row["heartbeat_at"] = at
    upsert(
        conn,
        log,
        [row],
        conflict=_ROW_KEY,
        update=lambda new: (
            {name: log.c[name] + new[name] for name in RUN_COUNTERS}
            | ({"heartbeat_at": new.heartbeat_at} if heartbeat else {})
        ),
    )


def new_log_row(run_id: str, credential: str, resource: str, started: datetime) -> dict[str, Any]:
    """A log row that starts ``running`` now with every counter at 0.

    :raises KeyError: ``resource`` is unknown (refused before anything is written).
    """
    get_resource(resource)
    return {
        "run_id": run_id,
        "credential": credential,
        "resource": resource,
        "status": RUNNING,
        "started_at": started,
        **RunCounts().counters(),
    }
