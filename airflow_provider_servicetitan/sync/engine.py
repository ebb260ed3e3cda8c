"""Checkpointed sync of one credential's resources from their export feeds (no Airflow import).

For each page: every record is validated; the valid ones are upserted and the page's
``continueFrom`` saved in the same transaction, the invalid ones parked as dead letters in it too.
Page N+1 is fetched while page N commits (see :mod:`.prefetch`): at most three pages are in
memory, whatever the size of the export. A failure leaves the checkpoint at the last committed
page, so a retry resumes there, and because writes are upserts by (tenant, id), re-running never duplicates.

Before it starts, a sync closes the log rows of earlier runs of the same credential and resource
that were left ``running`` by a process that is gone (see :mod:`.liveness`); its own row records
this process as owner and gets a heartbeat with every committed page. A re-export (see
:mod:`.reexport`) starts from the beginning of the feed or a day instead of the checkpoint.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import timedelta

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.client.client import ExportPage, ServiceTitanClient
from airflow_provider_servicetitan.errors import PermissionDeniedError, RecordValidationError
from airflow_provider_servicetitan.resilience.breaker import BreakerTransition
from airflow_provider_servicetitan.resilience.retry import RetryEvent
from airflow_provider_servicetitan.storage.models import DeadLetterIn, RunStatus
from airflow_provider_servicetitan.storage.records import ValidRecord
from airflow_provider_servicetitan.storage.store import SyncStore
from airflow_provider_servicetitan.sync.liveness import STALE_AFTER, close_interrupted_runs, syncing
from airflow_provider_servicetitan.sync.prefetch import prefetched
from airflow_provider_servicetitan.sync.records import validate_record
from airflow_provider_servicetitan.sync.reexport import Reexport

log = logging.getLogger(__name__)


@dataclass
class ResourceSummary:
    """What one resource's sync did in this try: small, no record data, safe for XCom."""

    resource: str
    status: RunStatus
    pages: int = 0
    processed: int = 0
    successful: int = 0
    failed: int = 0
    message: str | None = None


_counted_resource: ContextVar[str | None] = ContextVar("servicetitan_counted_resource", default=None)


@dataclass
class SyncEvents:
    """Counts retries and breaker transitions while a sync runs (hooked to the policy and breaker).

    ``retries`` and ``breaker_events`` are the totals. Resources of one credential sync in several
    threads at once (and each fetches its pages in a thread of its own): an event is also counted
    for the resource whose sync caused it, the one :meth:`counting_for` names in that thread's
    context, so each resource's log row gets its own.
    """

    retries: int = 0
    breaker_events: int = 0
    _retries_of: Counter[str | None] = dataclass_field(default_factory=Counter, repr=False)
    _transitions_of: Counter[str | None] = dataclass_field(default_factory=Counter, repr=False)
    _lock: threading.Lock = dataclass_field(default_factory=threading.Lock, repr=False, compare=False)

    def on_retry(self, _event: RetryEvent) -> None:
        with self._lock:
            self.retries += 1
            self._retries_of[_counted_resource.get()] += 1

    def on_transition(self, _transition: BreakerTransition) -> None:
        with self._lock:
            self.breaker_events += 1
            self._transitions_of[_counted_resource.get()] += 1

    @contextmanager
    def counting_for(self, resource: str) -> Iterator[None]:
        """Count the events of this context (and of the threads it starts) for ``resource`` too."""
        token = _counted_resource.set(resource)
        try:
            yield
        finally:
            _counted_resource.reset(token)

    def of(self, resource: str) -> tuple[int, int]:
        """Retries and breaker transitions counted for ``resource`` so far."""
        with self._lock:
            return self._retries_of[resource], self._transitions_of[resource]


def split_page(resource: str, page: ExportPage) -> tuple[list[ValidRecord], list[DeadLetterIn]]:
    """Validate every record of a page: the good ones to store, the bad ones to park."""
    catalogue_entry = get_resource(resource)
    good: list[ValidRecord] = []
    bad: list[DeadLetterIn] = []
    for raw in page.data:
        try:
            good.append(validate_record(catalogue_entry, raw))
        except RecordValidationError as error:
            bad.append(DeadLetterIn.from_error(raw, error))
    return good, bad


def sync_resource(
    client: ServiceTitanClient,
    store: SyncStore,
    *,
    credential: str,
    resource: str,
    run_id: str,
    include_recent_changes: bool = False,
    events: SyncEvents | None = None,
    reexport: Reexport | None = None,
    stale_after: timedelta = STALE_AFTER,
) -> ResourceSummary:
    """Sync one resource from its checkpoint to the end of its export feed.

    A 403 (module not licensed) is recorded as ``skipped`` and returned, not raised, so the other
    resources go on. Any other error is recorded as ``failed`` in the sync log and raised; the
    checkpoint stays at the last committed page. Retries and breaker transitions that ``events``
    counts meanwhile are added to the resource's log row.

    :param reexport: read the feed again from there instead of the checkpoint. A retry of the same
        run whose re-export already committed a page resumes it from the checkpoint instead.
    :param stale_after: how long without a heartbeat an earlier running row of another host is
        taken for interrupted (see :mod:`.liveness`).
    """
    events = events or SyncEvents()
    retries_before, breaker_events_before = events.of(resource)

    def finish(status: RunStatus, message: str | None) -> None:
        retries, breaker_events = events.of(resource)
        store.finish_run(
            run_id,
            credential,
            resource,
            status,
            message,
            retries=retries - retries_before,
            breaker_events=breaker_events - breaker_events_before,
        )

    summary = ResourceSummary(resource=resource, status="success")
    close_interrupted_runs(store, credential, resource, by_run_id=run_id, stale_after=stale_after)
    with syncing(run_id, credential, resource) as owner, events.counting_for(resource):
        store.start_run(run_id, credential, resource, owner)
        start, restart = _starting_point(store, credential, resource, run_id, reexport)
        pages = client.export(resource, continue_from=start, include_recent_changes=include_recent_changes)
        try:
            with prefetched(pages, name=f"servicetitan-fetch-{resource}") as ahead:
                _store_pages(store, client.tenant_id, ahead, summary, credential, resource, run_id, restart)
        except PermissionDeniedError as denied:
            summary.status = "skipped"
            summary.message = f"not licensed or not permitted: {denied}"
            log.warning("Skipping %s for %s: %s", resource, credential, denied)
        except Exception as error:
            summary.status = "failed"
            summary.message = f"{type(error).__name__}: {error}"
            finish("failed", summary.message)
            raise
        if summary.status == "success" and summary.failed:
            summary.status = "partial"
            summary.message = f"{summary.failed} record(s) parked as dead letters"
        if reexport is not None and summary.status != "skipped":
            summary.message = "; ".join(filter(None, (f"re-exported from {reexport}", summary.message)))
        finish(summary.status, summary.message)
    log.info(
        "Synced %s for %s: %d page(s), %d record(s) stored, %d parked",
        resource,
        credential,
        summary.pages,
        summary.successful,
        summary.failed,
    )
    return summary


def _store_pages(
    store: SyncStore,
    tenant_id: int,
    pages: Iterable[ExportPage],
    summary: ResourceSummary,
    credential: str,
    resource: str,
    run_id: str,
    restart: bool,
) -> None:
    """Commit each page with its checkpoint, in order, counting it in ``summary``."""
    for page in pages:
        good, bad = split_page(resource, page)
        store.commit_page(
            credential=credential,
            tenant_id=tenant_id,
            resource=resource,
            run_id=run_id,
            records=good,
            dead_letters=bad,
            continue_from=page.continue_from,
            restart_checkpoint=restart,
        )
        restart = False
        summary.pages += 1
        summary.processed += len(good) + len(bad)
        summary.successful += len(good)
        summary.failed += len(bad)


def _starting_point(
    store: SyncStore, credential: str, resource: str, run_id: str, reexport: Reexport | None
) -> tuple[str | None, bool]:
    """Where the export starts, and whether its first page restarts the checkpoint (a re-export)."""
    checkpoint = store.get_checkpoint(credential, resource)
    if reexport is not None and (checkpoint is None or checkpoint.reexport_run_id != run_id):
        log.info("Re-exporting %s for %s from %s", resource, credential, reexport)
        return reexport.export_from, True
    start = checkpoint.continue_from if checkpoint else None
    log.info("Syncing %s for %s from %s", resource, credential, "its checkpoint" if start else "the start")
    return start, False
