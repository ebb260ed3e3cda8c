"""A credential's whole life in one run, without Airflow: skip it, sync it, or stop for a person.

The rules, in order:

1. A connection whose fields are invalid needs attention (``field`` names the field): nothing is
   called.
2. A credential already marked ``needs_attention`` with the same secret (fingerprint) is known bad:
   each resource gets a ``skipped`` run-log row and nothing is called, so ServiceTitan is not asked
   again with a secret it rejected (account lock-outs). A changed secret is tried again.
3. Each resource syncs from its checkpoint, several at once (``max_concurrency``). A rejected
   credential stops the run (no resource starts after it) and needs attention. An open circuit
   breaker (or a rate limit that outlasted the retries) stops it too: the other resources share
   that breaker and tenant, so calling them would only wait or be refused; the caller can wait for
   the breaker without holding a worker (``held_back_for``). Any other failure is recorded and the
   other resources still sync.
4. A failed or unlicensed (skipped) resource leaves the credential ``degraded``, naming them; the
   first failure is handed back so the caller can retry the run. Otherwise it is ``ok``, and the
   incidents of :data:`RESOLVED_BY_A_CLEAN_SYNC` are over.

The caller (the Airflow operator) maps the :class:`CredentialOutcome` to a task state.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Literal, Protocol

from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.errors import (
    CircuitBreakerOpenError,
    CredentialValidationError,
    InvalidCredentialsError,
    RateLimitExceededError,
    root_cause,
)
from airflow_provider_servicetitan.resilience.breaker import BreakerState
from airflow_provider_servicetitan.resilience.checks import require_positive_int
from airflow_provider_servicetitan.storage.models import RunLog
from airflow_provider_servicetitan.storage.store import SyncStore
from airflow_provider_servicetitan.sync.engine import ResourceSummary, SyncEvents, sync_resource
from airflow_provider_servicetitan.sync.reexport import Reexport

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "RESOLVED_BY_A_CLEAN_SYNC",
    "ClientFactory",
    "CredentialOutcome",
    "OutcomeKind",
    "sync_credential",
]

log = logging.getLogger(__name__)

OutcomeKind = Literal["skipped_known_bad", "needs_attention", "degraded", "ok"]

# Kinds of incident (alert kinds) a clean sync ends. Too many dead letters ends only when the
# report counts fewer.
RESOLVED_BY_A_CLEAN_SYNC: tuple[str, ...] = ("needs_attention", "retries_exhausted", "circuit_opened")
#: Resources of one credential that sync at the same time, by default: every export resource, so the
#: slowest one, not a queue of them, sets how long a credential takes. The tenant's shared rate limiter
#: paces them all: more at once never means more 429s, only the limit used fully.
DEFAULT_MAX_CONCURRENCY = len(EXPORTABLE_RESOURCES)
# Resource statuses that leave the credential degraded (a ``partial`` one parked records: still ok).
_DEGRADING = ("failed", "skipped")


class ClientFactory(Protocol):
    """Where the credential and its client come from (``ServiceTitanHook`` is one).

    Both may raise :class:`CredentialValidationError` for a misconfigured connection.
    """

    def get_credentials(self) -> ServiceTitanCredentials: ...

    def get_conn(self) -> ServiceTitanClient: ...


@dataclass(frozen=True)
class CredentialOutcome:
    """How a credential's run ended.

    :param kind: ``skipped_known_bad``, ``needs_attention``, ``degraded`` or ``ok``.
    :param reason: why it was skipped, needs attention or is degraded (no secret in it).
    :param field: the invalid connection field, when a misconfiguration is the reason.
    :param summaries: what each resource's sync did, by resource, in sync order.
    :param error: ``needs_attention``: the error that calls a person; ``degraded``: the first
        failure, to raise so the run is retried (``None`` when resources were only skipped).
    :param resolves: kinds of incident this run ended (see :data:`RESOLVED_BY_A_CLEAN_SYNC`).
    :param tenant_id: the credential's tenant, once the client was built.
    :param run_log: the credential's sync-log rows of this run, by resource, read when it ended:
        the counts of every try of the run so far, as ``sync_log`` holds them.
    :param not_attempted: resources left alone because the circuit was open or the tenant rate
        limited (see :attr:`held_back_for`).
    """

    kind: OutcomeKind
    reason: str | None = None
    field: str | None = None
    summaries: Mapping[str, ResourceSummary] = dataclass_field(default_factory=dict)
    error: Exception | None = None
    resolves: tuple[str, ...] = ()
    tenant_id: int | None = None
    run_log: Mapping[str, RunLog] = dataclass_field(default_factory=dict)
    not_attempted: tuple[str, ...] = ()

    @property
    def degraded_resources(self) -> list[str]:
        """The resources that failed or were skipped."""
        return [name for name, summary in self.summaries.items() if summary.status in _DEGRADING]

    @property
    def held_back_for(self) -> float | None:
        """Seconds until ServiceTitan may be called again, when the run stopped on an open circuit
        breaker or a rate limit; ``None`` when it did not."""
        return wait_asked_by(self.error) if self.error is not None else None

    def summary_dict(self) -> dict[str, dict[str, object]]:
        """The run's sync-log rows of this credential, JSON-ready, with the same counters as
        ``sync_log``: ``{resource: {status, message, pages, records_processed, ...}}``."""
        return {
            name: {"status": row.status, "message": row.message, **row.counters()} for name, row in self.run_log.items()
        }


def wait_asked_by(error: BaseException) -> float | None:
    """How long ``error`` (or the error the retries gave up on) says to leave ServiceTitan alone:
    the time until an open breaker admits a probe, or a 429's ``Retry-After``; ``None`` otherwise."""
    cause = root_cause(error)
    if isinstance(cause, CircuitBreakerOpenError):
        return cause.retry_after
    if isinstance(cause, RateLimitExceededError):
        return cause.retry_after or 0.0
    return None


def sync_credential(
    factory: ClientFactory,
    store: SyncStore,
    *,
    credential: str,
    run_id: str,
    resources: Sequence[str],
    reexports: Mapping[str, Reexport] | None = None,
    include_recent_changes: bool = False,
    events: SyncEvents | None = None,
    on_connect: Callable[[ServiceTitanClient], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
    on_resource: Callable[[ResourceSummary, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
) -> CredentialOutcome:
    """Run ``credential``'s sync of ``resources`` for ``run_id`` and record its status in ``store``.

    Up to ``max_concurrency`` resources sync at once, each in a thread of its own, all through the
    credential's one client (its breaker, token and rate limiter are shared by every thread). A
    store on in-memory SQLite (one connection for every thread) syncs one resource at a time.

    :param factory: gives the credential (checked before anything else) and the client.
    :param reexports: resources to re-export instead of resuming, with where from.
    :param events: counts retries and breaker transitions (its breaker listener is added here).
    :param on_connect: called with the client before its first call (e.g. to add breaker listeners).
    :param on_error: told of every error a resource's sync raised (metrics).
    :param on_resource: told of each resource's summary and how long it took (metrics).
    :param clock: monotonic seconds, for the durations given to ``on_resource``.
    :param max_concurrency: how many resources sync at the same time (>= 1).
    """
    require_positive_int(max_concurrency, "max_concurrency")
    events = events or SyncEvents()
    try:
        fingerprint = factory.get_credentials().secret_fingerprint
    except CredentialValidationError as invalid:
        return _needs_attention(store, credential, invalid, None)
    known_bad = _known_bad_reason(store, credential, fingerprint)
    if known_bad is not None:
        for resource in resources:
            store.start_run(run_id, credential, resource)
            store.finish_run(run_id, credential, resource, "skipped", known_bad)
        return CredentialOutcome("skipped_known_bad", reason=known_bad)
    try:
        client = factory.get_conn()
    except CredentialValidationError as invalid:
        return _needs_attention(store, credential, invalid, fingerprint)
    client.breaker.add_listener(events.on_transition)
    if on_connect is not None:
        on_connect(client)

    batch = _ResourceBatch(
        functools.partial(
            sync_resource,
            client,
            store,
            credential=credential,
            run_id=run_id,
            include_recent_changes=include_recent_changes,
            events=events,
        ),
        reexports=reexports or {},
        on_error=on_error,
        on_resource=on_resource,
        clock=clock,
    )
    concurrency = 1 if store.one_writer_at_a_time else max_concurrency
    # A breaker that is not closed admits only its probes: one resource goes first, the others
    # follow once it got through, instead of being refused while it probes.
    batch.run(resources, concurrency, probe_first=client.breaker.state is not BreakerState.CLOSED)
    summaries = {resource: batch.summaries[resource] for resource in resources if resource in batch.summaries}
    if batch.rejected is not None:
        return _needs_attention(store, credential, batch.rejected, fingerprint)
    if batch.held_back:
        not_attempted = [resource for resource in resources if resource not in summaries]
        return _degraded(store, credential, fingerprint, run_id, client, summaries, batch.handed_back, not_attempted)
    if any(summary.status in _DEGRADING for summary in summaries.values()):
        return _degraded(store, credential, fingerprint, run_id, client, summaries, batch.handed_back, ())
    store.set_credential_status(credential, "ok", None, fingerprint)
    return CredentialOutcome(
        "ok",
        summaries=summaries,
        resolves=RESOLVED_BY_A_CLEAN_SYNC,
        tenant_id=client.tenant_id,
        run_log=_run_log(store, run_id, credential),
    )


class _ResourceBatch:
    """Syncs a credential's resources, up to ``concurrency`` at a time, and keeps what they did.

    It starts no new resource once one was rejected (the credential needs attention: every other
    call would be refused too) or held back (an open breaker or a rate limit: the others share the
    breaker and the tenant). Resources already running finish their own way. Callbacks run in the
    calling thread, as each resource ends.
    """

    def __init__(
        self,
        sync: Callable[..., ResourceSummary],
        *,
        reexports: Mapping[str, Reexport],
        on_error: Callable[[Exception], None] | None,
        on_resource: Callable[[ResourceSummary, float], None] | None,
        clock: Callable[[], float],
    ) -> None:
        """:param sync: syncs one resource, given ``resource=`` and ``reexport=`` (``sync_resource``
        with the rest bound)."""
        self._sync = sync
        self._reexports = reexports
        self._on_error = on_error
        self._on_resource = on_resource
        self._clock = clock
        self.summaries: dict[str, ResourceSummary] = {}
        self.rejected: InvalidCredentialsError | None = None
        self.held_back = False
        # The error handed back: the first failure, or the one that held the run back (it says how long).
        self.handed_back: Exception | None = None

    def run(self, resources: Sequence[str], concurrency: int, *, probe_first: bool = False) -> None:
        """Sync ``resources``, ``concurrency`` at a time; with ``probe_first``, one at a time until
        one of them succeeds."""
        waiting = list(resources)
        running: dict[Future[ResourceSummary], tuple[str, float]] = {}
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="servicetitan-resource") as pool:
            while running or (waiting and not self._stopping):
                got_through = any(summary.status != "failed" for summary in self.summaries.values())
                limit = 1 if probe_first and not got_through else concurrency
                while waiting and len(running) < limit and not self._stopping:
                    resource = waiting.pop(0)
                    sync = functools.partial(self._sync, resource=resource, reexport=self._reexports.get(resource))
                    future = pool.submit(contextvars.copy_context().run, sync)
                    running[future] = (resource, self._clock())
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    resource, started = running.pop(future)
                    self._settle(resource, future)
                    if self._on_resource is not None and resource in self.summaries:
                        self._on_resource(self.summaries[resource], self._clock() - started)

    @property
    def _stopping(self) -> bool:
        return self.rejected is not None or self.held_back

    def _settle(self, resource: str, future: Future[ResourceSummary]) -> None:
        error = future.exception()
        if error is None:
            self.summaries[resource] = future.result()
            return
        if not isinstance(error, Exception):
            raise error
        if self._on_error is not None:
            self._on_error(error)
        if isinstance(error, InvalidCredentialsError):
            self.rejected = self.rejected or error
            return
        self.summaries[resource] = ResourceSummary(resource, "failed", message=f"{type(error).__name__}: {error}")
        held_back = wait_asked_by(error) is not None
        if held_back and not self.held_back:
            self.handed_back = error
        self.held_back = self.held_back or held_back
        self.handed_back = self.handed_back or error
        log.warning(
            "Sync of %s failed (%s); %s",
            resource,
            error,
            "leaving the other resources for later" if held_back else "continuing with the other resources",
        )


def _degraded(
    store: SyncStore,
    credential: str,
    fingerprint: str,
    run_id: str,
    client: ServiceTitanClient,
    summaries: Mapping[str, ResourceSummary],
    error: Exception | None,
    not_attempted: Sequence[str],
) -> CredentialOutcome:
    reasons = [f"{s.resource}: {s.message}" for s in summaries.values() if s.status != "success"]
    if not_attempted:
        reasons.append(f"not attempted until ServiceTitan may be called again: {', '.join(not_attempted)}")
    reason = "; ".join(reasons)
    store.set_credential_status(credential, "degraded", reason, fingerprint)
    return CredentialOutcome(
        "degraded",
        reason=reason,
        summaries=summaries,
        error=error,
        tenant_id=client.tenant_id,
        run_log=_run_log(store, run_id, credential),
        not_attempted=tuple(not_attempted),
    )


def _run_log(store: SyncStore, run_id: str, credential: str) -> dict[str, RunLog]:
    return {row.resource: row for row in store.get_run_log(run_id, credential)}


def _known_bad_reason(store: SyncStore, credential: str, fingerprint: str) -> str | None:
    """Why the credential is skipped: it needs attention and its secret has not changed since."""
    status = store.get_credential_status(credential)
    if status is None or status.status != "needs_attention" or status.secret_fingerprint != fingerprint:
        return None
    return f"credential needs attention since {status.since:%Y-%m-%d %H:%M} UTC: {status.reason}"


def _needs_attention(
    store: SyncStore,
    credential: str,
    error: CredentialValidationError | InvalidCredentialsError,
    fingerprint: str | None,
) -> CredentialOutcome:
    reason = str(error)
    store.set_credential_status(credential, "needs_attention", reason, fingerprint)
    field_name = error.field if isinstance(error, CredentialValidationError) else None
    return CredentialOutcome("needs_attention", reason=reason, field=field_name, error=error)
