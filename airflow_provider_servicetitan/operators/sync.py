"""ServiceTitanSyncOperator: sync one credential's resources into the warehouse.

Errors become Airflow outcomes: a credential ServiceTitan rejects, or a misconfigured connection,
fails the task at once (no Airflow retries) and marks the credential ``needs_attention``; later
runs skip it, recorded, until its secret changes. Retryable failures leave each checkpoint where
it was and let Airflow retry with exponential backoff; the other resources still sync.

A person can re-export resources from the start or from a day (``reexport_from``); see
:mod:`airflow_provider_servicetitan.sync.reexport` for why that is as safe as any sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_provider_servicetitan import metrics
from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES, RESOURCES
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.hooks.warehouse import DEFAULT_WAREHOUSE_CONN_ID, open_store
from airflow_provider_servicetitan.notifications.classify import resolved_alert
from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.sync.credential import CredentialOutcome, sync_credential
from airflow_provider_servicetitan.sync.engine import SyncEvents
from airflow_provider_servicetitan.sync.reexport import Reexport, parse_reexport_from, parse_reexport_resources

__all__ = ["CREDENTIAL_TASK_DEFAULTS", "ServiceTitanSyncOperator"]

# Airflow-level retries for failures the in-call retries could not fix (outage, open circuit).
# A mapped operator takes these from partial(), not from __init__: a DAG that maps the sync task
# passes them there (``ServiceTitanSyncOperator.partial(**CREDENTIAL_TASK_DEFAULTS, ...)``).
CREDENTIAL_TASK_DEFAULTS: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
}


class ServiceTitanSyncOperator(BaseOperator):
    """Sync ServiceTitan resources of one credential from their export feeds.

    :param servicetitan_conn_id: the credential's ServiceTitan connection (templated).
    :param servicetitan_resources: resources to sync, default every exportable one (templated).
        Not called ``resources``: that name is BaseOperator's (executor resources).
    :param warehouse_conn_id: where data goes: a ``sqlite`` or ``postgres`` connection (templated).
    :param redis_conn_id: Redis for shared tokens and breaker; ``None`` for per-process state.
    :param redis_namespace: prefix of the Redis keys (tokens, breakers).
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

    Returns (XCom) ``{resource: {status, pages, processed, successful, failed, message}}``; the
    message of a re-exported resource says so. Before syncing a resource, earlier runs of it left
    ``running`` by a process that is gone are marked ``interrupted`` (see ``sync.liveness``).
    """

    template_fields: Sequence[str] = (
        "servicetitan_conn_id",
        "servicetitan_resources",
        "warehouse_conn_id",
        "reexport_from",
        "reexport_resources",
    )
    ui_color = "#f4b942"

    def __init__(
        self,
        *,
        servicetitan_conn_id: str,
        servicetitan_resources: Sequence[str] | None = None,
        warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
        redis_conn_id: str | None = "redis_default",
        redis_namespace: str = "servicetitan",
        table_prefix: str = "servicetitan",
        retry_preset: str | None = None,
        breaker_config: BreakerConfig | None = None,
        include_recent_changes: bool = False,
        alert_notifier: ServiceTitanAlertNotifier | None = None,
        reexport_from: str | None = None,
        reexport_resources: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        for name, value in CREDENTIAL_TASK_DEFAULTS.items():
            kwargs.setdefault(name, value)
        super().__init__(**kwargs)
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

    def execute(self, context: Context) -> dict[str, dict[str, object]]:
        self._check_resources()
        reexports = self._reexports()
        credential = self.servicetitan_conn_id
        events = SyncEvents()
        hook = ServiceTitanHook(
            credential,
            self.redis_conn_id,
            retry_policy=RetryPolicy.preset(self.retry_preset) if self.retry_preset else None,
            breaker_config=self.breaker_config,
            namespace=self.redis_namespace,
            retry_listener=events.on_retry,
        )
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
                on_connect=self._alert_on_breaker_open,
                on_error=partial(metrics.count_error, credential),
                on_resource=partial(metrics.emit_resource_summary, credential),
            )
        return self._task_result(outcome)

    def _alert_on_breaker_open(self, client: ServiceTitanClient) -> None:
        if self.alert_notifier is not None:
            listener = self.alert_notifier.transition_listener(
                self.servicetitan_conn_id, tenant_id=str(client.tenant_id)
            )
            client.breaker.add_listener(listener)

    def _task_result(self, outcome: CredentialOutcome) -> dict[str, dict[str, object]]:
        """The outcome as Airflow sees it: skipped, failed for good, retried, or the XCom summary."""
        credential = self.servicetitan_conn_id
        if outcome.kind == "skipped_known_bad":
            raise AirflowSkipException(f"{outcome.reason}. Fix the connection's secret or credentials to resume.")
        if outcome.kind == "needs_attention":
            raise AirflowFailException(f"{credential} needs attention: {outcome.reason}") from outcome.error
        if self.alert_notifier is not None:
            for kind in outcome.resolves:
                self.alert_notifier.send(resolved_alert(credential, kind, tenant_id=str(outcome.tenant_id)))
        result = outcome.summary_dict()
        self.log.info("Sync summary for %s: %s", credential, result)
        if outcome.error is not None:
            raise outcome.error
        return result

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
