"""ServiceTitanSyncOperator: sync one credential's resources into the warehouse.

Errors become Airflow outcomes: a credential ServiceTitan rejects, or a misconfigured connection,
fails the task at once (no Airflow retries) and marks the credential ``needs_attention``; later
runs skip it, recorded, until its secret changes. Retryable failures leave each checkpoint where
it was and let Airflow retry with exponential backoff; the other resources still sync.

Waiting never holds a worker: when the credential's circuit breaker is open, or ServiceTitan asks
for a pause longer than ``defer_after``, the task defers to the triggerer
(:class:`~airflow_provider_servicetitan.triggers.breaker.BreakerProbeTrigger`), which watches the
shared breaker in Redis and resumes the task when it would admit a probe; the task then resumes
from its checkpoints, in the same try. A try started by a person's Clear (not by Airflow's own
retry), or with ``probe_now``, asks the breaker for one probe at once
(:meth:`~airflow_provider_servicetitan.resilience.breaker.CircuitBreaker.request_probe`).

Each resource synced by a successful task is announced as an Airflow asset event
``servicetitan://<connection id>/<resource>`` through the asset alias ``servicetitan`` (the
credentials are mapped at run time), with the run's counts in its ``extra``.

A person can re-export resources from the start or from a day (``reexport_from``); see
:mod:`airflow_provider_servicetitan.sync.reexport` for why that is as safe as any sync.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from typing import Any

from airflow.sdk import Asset, AssetAlias, BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_provider_servicetitan import metrics
from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES, RESOURCES
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.errors import CircuitBreakerOpenError, root_cause
from airflow_provider_servicetitan.hooks import settings
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.hooks.warehouse import DEFAULT_WAREHOUSE_CONN_ID, open_store
from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier
from airflow_provider_servicetitan.operators.crash import die_on_native_crash
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker
from airflow_provider_servicetitan.resilience.checks import require_positive_int
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.sync.credential import DEFAULT_MAX_CONCURRENCY, CredentialOutcome, sync_credential
from airflow_provider_servicetitan.sync.engine import SyncEvents
from airflow_provider_servicetitan.sync.reexport import Reexport, parse_reexport_from, parse_reexport_resources
from airflow_provider_servicetitan.task_retry import started_by_clear
from airflow_provider_servicetitan.triggers.breaker import BreakerProbeTrigger

__all__ = ["CREDENTIAL_TASK_DEFAULTS", "SERVICETITAN_ASSET_ALIAS", "ServiceTitanSyncOperator", "synced_asset"]

# Airflow-level retries for failures the in-call retries could not fix (outage, open circuit).
# A mapped operator takes these from partial(), not from __init__: a DAG that maps the sync task
# passes them there (``ServiceTitanSyncOperator.partial(**CREDENTIAL_TASK_DEFAULTS, ...)``).
CREDENTIAL_TASK_DEFAULTS: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
}

#: The asset alias every sync task announces its synced resources through.
SERVICETITAN_ASSET_ALIAS = "servicetitan"


def synced_asset(servicetitan_conn_id: str, resource: str) -> Asset:
    """The Airflow asset of one credential's resource: schedule a DAG on it to run on fresh data."""
    return Asset(
        name=f"servicetitan/{servicetitan_conn_id}/{resource}",
        uri=f"servicetitan://{servicetitan_conn_id}/{resource}",
        group="servicetitan",
    )


class ServiceTitanSyncOperator(BaseOperator):
    """Sync ServiceTitan resources of one credential from their export feeds.

    :param servicetitan_conn_id: the credential's ServiceTitan connection (templated).
    :param servicetitan_resources: resources to sync, default every exportable one (templated).
        Not called ``resources``: that name is BaseOperator's (executor resources).
    :param warehouse_conn_id: where data goes: a ``sqlite`` or ``postgres`` connection (templated).
    :param redis_conn_id: Redis for shared tokens and breaker; ``None`` for per-process state.
        Default: the ``[servicetitan] redis_conn_id`` setting (``redis_default``).
    :param redis_namespace: prefix of the Redis keys (tokens, breakers). Default: the
        ``[servicetitan] redis_namespace`` setting (``servicetitan``).
    :param table_prefix: prefix of the warehouse tables.
    :param retry_preset: ``default`` | ``aggressive`` | ``conservative``; overrides the connection.
    :param breaker_config: overrides the connection's breaker settings.
    :param include_recent_changes: ask the export feeds for changes of the last minutes too.
    :param alert_notifier: alerted when this task's calls open the credential's circuit breaker
        (once per transition across all workers), and told when the credential syncs cleanly.
    :param reexport_from: ``start`` to re-export from scratch, or a day ``YYYY-MM-DD`` (not in the
        future) to re-export the changes since then, instead of resuming from the checkpoint
        (templated; empty or ``None``: a normal sync). Idempotent like every sync: records are
        upserted by id. The old checkpoint stays until the re-export's first page commits; a retry
        of the same run resumes the re-export. An invalid value fails the task without retries.
    :param reexport_resources: which of the task's resources to re-export (templated; a list, or
        comma-separated text as a template renders it); default: all of them. The others sync
        normally.
    :param deferrable: wait for an open circuit breaker or a long rate-limit pause in the
        triggerer instead of a worker slot. Needs the shared Redis (``redis_conn_id``); without it
        the task fails the try and Airflow's retry policy waits, as before.
    :param defer_after: a wait ServiceTitan or the breaker asks for that is longer than this
        defers the task; shorter ones are slept in the call's own retries.
    :param max_deferred: how long a try may wait deferred in all; a wait that would pass it goes
        to Airflow's retries instead (so an outage that lasts still fails the task and alerts someone).
    :param probe_now: ask the breaker for a probe at once whatever its remaining open time
        (templated, e.g. from a DAG param). A try started by a person's Clear does so anyway.
    :param asset_alias: the asset alias the synced resources are announced through (``None``: no
        asset events).
    :param max_concurrency: how many of the credential's resources sync at the same time, each in
        a thread of this task, all paced by the tenant's shared rate limiter (default: every export resource, 7).

    Returns (XCom) the run's sync-log rows of this credential, with the counters of ``sync_log``:
    ``{resource: {status, message, pages, records_processed, records_successful, ...}}``. Before
    syncing a resource, earlier runs of it left ``running`` by a process that is gone are marked
    ``interrupted`` (see ``sync.liveness``).
    """

    template_fields: Sequence[str] = (
        "servicetitan_conn_id",
        "servicetitan_resources",
        "warehouse_conn_id",
        "reexport_from",
        "reexport_resources",
        "probe_now",
    )
    ui_color = "#f4b942"

    def __init__(
        self,
        *,
        servicetitan_conn_id: str,
        servicetitan_resources: Sequence[str] | None = None,
        warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
        redis_conn_id: str | settings.FromConfig | None = settings.FROM_CONFIG,
        redis_namespace: str | None = None,
        table_prefix: str = "servicetitan",
        retry_preset: str | None = None,
        breaker_config: BreakerConfig | None = None,
        include_recent_changes: bool = False,
        alert_notifier: ServiceTitanAlertNotifier | None = None,
        reexport_from: str | None = None,
        reexport_resources: Sequence[str] | str | None = None,
        deferrable: bool = True,
        defer_after: timedelta = timedelta(seconds=5),
        max_deferred: timedelta = timedelta(hours=1),
        probe_now: bool | str = False,
        asset_alias: str | None = SERVICETITAN_ASSET_ALIAS,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        **kwargs: Any,
    ) -> None:
        for name, value in CREDENTIAL_TASK_DEFAULTS.items():
            kwargs.setdefault(name, value)
        if asset_alias is not None:
            kwargs["outlets"] = [*(kwargs.get("outlets") or []), AssetAlias(name=asset_alias)]
        super().__init__(**kwargs)
        for name, value in (("defer_after", defer_after), ("max_deferred", max_deferred)):
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise ValueError(f"{name} must be a positive timedelta, got {value!r}")
        require_positive_int(max_concurrency, "max_concurrency")
        self.servicetitan_conn_id = servicetitan_conn_id
        self.servicetitan_resources = (
            list(servicetitan_resources) if servicetitan_resources is not None else list(EXPORTABLE_RESOURCES)
        )
        self.warehouse_conn_id = warehouse_conn_id
        self.redis_conn_id = redis_conn_id
        self.redis_namespace = redis_namespace
        self.table_prefix = table_prefix
        self.retry_preset = retry_preset
        self.breaker_config = breaker_config
        self.include_recent_changes = include_recent_changes
        self.alert_notifier = alert_notifier
        self.reexport_from = reexport_from
        self.reexport_resources = reexport_resources
        self.deferrable = deferrable
        self.defer_after = defer_after
        self.max_deferred = max_deferred
        self.probe_now = probe_now
        self.asset_alias = asset_alias
        self.max_concurrency = max_concurrency

    def execute(self, context: Context) -> dict[str, dict[str, object]]:
        return self._sync(context, resumed=False, deferred_since=None)

    def execute_complete(
        self, context: Context, event: dict[str, Any], deferred_since: float | None = None
    ) -> dict[str, dict[str, object]]:
        """Resumed by the trigger: the breaker admits a probe, the pause is over, or Redis could not
        be read for a while (then the breaker runs per process and Airflow's retries do the waiting).
        Sync again from the checkpoints, in the same try. (``dag.test()`` passes only the event.)"""
        self.log.info("Resuming %s after waiting in the triggerer: %s", self.servicetitan_conn_id, event)
        return self._sync(context, resumed=True, deferred_since=deferred_since)

    def _sync(self, context: Context, *, resumed: bool, deferred_since: float | None) -> dict[str, dict[str, object]]:
        die_on_native_crash()  # resources sync in threads: a driver's crash must fail the try, not hang it
        self._check_resources()
        reexports = self._reexports()
        credential = self.servicetitan_conn_id
        events = SyncEvents()
        # Deferring needs the shared Redis: the triggerer watches the breaker there.
        redis_conn_id = settings.redis_conn_id(self.redis_conn_id)
        defer_with = redis_conn_id if self.deferrable else None
        hook = ServiceTitanHook(
            credential,
            redis_conn_id,
            retry_policy=RetryPolicy.preset(self.retry_preset) if self.retry_preset else None,
            breaker_config=self.breaker_config,
            namespace=self.redis_namespace,
            retry_listener=events.on_retry,
            max_retry_after=self.defer_after.total_seconds() if defer_with is not None else None,
        )
        breakers: list[CircuitBreaker] = []
        probe_now = not resumed and self._asked_to_probe(context)
        # Leaving the hook closes the client it built (its HTTP sessions).
        with hook, open_store(self.warehouse_conn_id, table_prefix=self.table_prefix) as store:
            outcome = sync_credential(
                hook,
                store,
                credential=credential,
                run_id=str(context["run_id"]),
                resources=self.servicetitan_resources,
                reexports=reexports,
                include_recent_changes=self.include_recent_changes,
                events=events,
                on_connect=partial(self._on_connect, breakers=breakers, probe_now=probe_now),
                on_error=partial(metrics.count_error, credential),
                on_resource=partial(metrics.emit_resource_summary, credential),
                max_concurrency=self.max_concurrency,
            )
        if breakers and defer_with is not None:
            self._defer_if_held_back(outcome, breakers[0], deferred_since, defer_with)
        return self._task_result(outcome, context)

    def _asked_to_probe(self, context: Context) -> bool:
        """A person asked: ``probe_now``, or this try was started by a Clear (see
        :func:`~airflow_provider_servicetitan.task_retry.started_by_clear`)."""
        if _truthy(self.probe_now):
            self.log.info("probe_now is set: asking the circuit breaker for a probe at once")
            return True
        ti = context["ti"]
        if started_by_clear(ti.try_number, ti.max_tries, self.retries or 0):
            self.log.info(
                "Try %d was started by a Clear, not by a retry: asking the circuit breaker for a probe at once",
                ti.try_number,
            )
            return True
        return False

    def _on_connect(self, client: ServiceTitanClient, *, breakers: list[CircuitBreaker], probe_now: bool) -> None:
        breakers.append(client.breaker)
        if self.alert_notifier is not None:
            listener = self.alert_notifier.transition_listener(
                self.servicetitan_conn_id, tenant_id=str(client.tenant_id)
            )
            client.breaker.add_listener(listener)
        if probe_now:
            state = client.breaker.request_probe()
            self.log.info("Circuit breaker %r is %s", client.breaker.name, state)

    def _defer_if_held_back(
        self, outcome: CredentialOutcome, breaker: CircuitBreaker, deferred_since: float | None, redis_conn_id: str
    ) -> None:
        """Wait in the triggerer when the run stopped on an open breaker or a long rate-limit pause.

        An open breaker is watched in Redis (a reset or a person's probe request ends the wait
        early), so it needs the shared breaker; a rate-limit pause is waited out, whatever the breaker's
        backend. The trigger's timeout keeps the whole wait within ``max_deferred`` even if the breaker
        stays open for longer than it said (a failed probe elsewhere, an operator's ``force_open``).
        """
        wait = outcome.held_back_for
        if wait is None or outcome.error is None or wait <= self.defer_after.total_seconds():
            return
        watch_breaker = isinstance(root_cause(outcome.error), CircuitBreakerOpenError)
        if watch_breaker and breaker.backend != "redis":
            return
        now = time.time()
        since = deferred_since if deferred_since is not None else now
        budget = self.max_deferred.total_seconds() - (now - since)
        if wait > budget:
            self.log.warning(
                "Waiting %.0fs more would pass max_deferred (%s, %.0fs waited so far); leaving the wait to "
                "Airflow's retries",
                wait,
                self.max_deferred,
                now - since,
            )
            return
        self.log.info(
            "%s: %s. Waiting %.0fs in the triggerer (no worker slot), then resuming from the checkpoints",
            self.servicetitan_conn_id,
            outcome.reason,
            wait,
        )
        trigger = (
            BreakerProbeTrigger.for_breaker(breaker, redis_conn_id)
            if watch_breaker
            else BreakerProbeTrigger(not_before=now + wait)
        )
        self.defer(
            trigger=trigger,
            method_name="execute_complete",
            kwargs={"deferred_since": since},
            timeout=timedelta(seconds=budget),
        )

    def _task_result(self, outcome: CredentialOutcome, context: Context) -> dict[str, dict[str, object]]:
        """The outcome as Airflow sees it: skipped, failed for good, retried, or the XCom summary."""
        credential = self.servicetitan_conn_id
        if outcome.kind == "skipped_known_bad":
            raise AirflowSkipException(f"{outcome.reason}. Fix the connection's secret or credentials to resume.")
        if outcome.kind == "needs_attention":
            raise AirflowFailException(f"{credential} needs attention: {outcome.reason}") from outcome.error
        if self.alert_notifier is not None:
            self.alert_notifier.resolve(credential, outcome.resolves, tenant_id=outcome.tenant_id)
        result = outcome.summary_dict()
        self.log.info("Sync summary for %s: %s", credential, result)
        if outcome.error is not None:
            raise outcome.error
        self._announce_assets(outcome, context)
        return result

    def _announce_assets(self, outcome: CredentialOutcome, context: Context) -> None:
        """One asset event per resource synced in this try, with the run's counts."""
        if self.asset_alias is None:
            return
        events = context["outlet_events"][AssetAlias(name=self.asset_alias)]
        for resource, summary in outcome.summaries.items():
            row = outcome.run_log.get(resource)
            if summary.status not in ("success", "partial") or row is None:
                continue
            extra: dict[str, Any] = {
                "connection_id": self.servicetitan_conn_id,
                "resource": resource,
                "tenant_id": outcome.tenant_id,
                "run_id": row.run_id,
                "status": row.status,
                **row.counters(),
            }
            events.add(synced_asset(self.servicetitan_conn_id, resource), extra=extra)

    def _check_resources(self) -> None:
        unknown = [name for name in self.servicetitan_resources if name not in RESOURCES]
        not_exportable = [
            name for name in self.servicetitan_resources if name in RESOURCES and not RESOURCES[name].exportable
        ]
        if unknown or not_exportable:
            raise AirflowFailException(
                f"resources must be exportable ServiceTitan resources ({', '.join(EXPORTABLE_RESOURCES)}); "
                f"unknown: {unknown or 'none'}, without export feed: {not_exportable or 'none'}"
            )

    def _reexports(self) -> dict[str, Reexport]:
        """The re-export asked for, by resource, checked before anything else runs."""
        try:
            reexport = parse_reexport_from(self.reexport_from)
            named = parse_reexport_resources(self.reexport_resources, self.servicetitan_resources)
        except ValueError as invalid:
            raise AirflowFailException(str(invalid)) from None
        if reexport is None:
            if named:
                raise AirflowFailException(
                    "reexport_resources is set but reexport_from is not: set reexport_from to 'start' or a date"
                )
            return {}
        chosen = named or self.servicetitan_resources
        self.log.info("Re-exporting %s of %s from %s", ", ".join(chosen), self.servicetitan_conn_id, reexport)
        return dict.fromkeys(chosen, reexport)


def _truthy(value: bool | str) -> bool:
    """A flag given directly or rendered from a template (``"True"``, ``"false"``, ``""``...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off", "none"):
        return False
    raise AirflowFailException(f"probe_now must be true or false, got {value!r}")
