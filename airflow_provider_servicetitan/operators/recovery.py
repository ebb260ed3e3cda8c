"""ServiceTitanRecoveryOperator: re-process the records a sync parked, whatever upstream did."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_provider_servicetitan import metrics
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.hooks.settings import FROM_CONFIG, FromConfig
from airflow_provider_servicetitan.hooks.warehouse import DEFAULT_WAREHOUSE_CONN_ID, open_store
from airflow_provider_servicetitan.operators.crash import die_on_native_crash
from airflow_provider_servicetitan.sync.recovery import recover_dead_letters


class ServiceTitanRecoveryOperator(BaseOperator):
    """Re-fetch every open dead letter of a credential by id and store the ones that are now valid.

    Runs whatever happened upstream (``trigger_rule="all_done"`` by default) and is always safe to
    run again. Returns (XCom) ``{credential, status, attempted, recovered, failed, needs_attention}``
    where ``status`` is ``success``, ``partial`` or ``failure`` and ``needs_attention`` counts the
    parked records only a person can resolve: those without a usable id (never attempted: they
    cannot be fetched again) and those that failed ``max_attempts`` times.

    :param servicetitan_conn_id: the credential's ServiceTitan connection (templated).
    :param warehouse_conn_id: the warehouse the sync wrote to (templated).
    :param redis_conn_id: Redis for shared tokens and breaker; ``None`` for per-process state.
        Default: ``[servicetitan] redis_conn_id`` (see ``hooks.settings``).
    :param redis_namespace: prefix of the Redis keys (tokens, breakers). Default:
        ``[servicetitan] redis_namespace``.
    :param table_prefix: prefix of the warehouse tables.
    :param max_attempts: recovery attempts per record before it is left for a person.
    """

    template_fields: Sequence[str] = ("servicetitan_conn_id", "warehouse_conn_id")
    ui_color = "#9bd4a4"

    def __init__(
        self,
        *,
        servicetitan_conn_id: str,
        warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
        redis_conn_id: str | FromConfig | None = FROM_CONFIG,
        redis_namespace: str | None = None,
        table_prefix: str = "servicetitan",
        max_attempts: int = 3,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.servicetitan_conn_id = servicetitan_conn_id
        self.warehouse_conn_id = warehouse_conn_id
        self.redis_conn_id = redis_conn_id
        self.redis_namespace = redis_namespace
        self.table_prefix = table_prefix
        self.max_attempts = max_attempts

    def execute(self, context: Context) -> dict[str, object]:
        die_on_native_crash()
        hook = ServiceTitanHook(self.servicetitan_conn_id, self.redis_conn_id, namespace=self.redis_namespace)
        # Leaving the hook closes the client it built (its HTTP sessions).
        with hook, open_store(self.warehouse_conn_id, table_prefix=self.table_prefix) as store:
            result = recover_dead_letters(
                hook.get_conn(),
                store,
                credential=self.servicetitan_conn_id,
                run_id=str(context["run_id"]),
                max_attempts=self.max_attempts,
            )
        metrics.emit_recovery(result)
        if result.needs_attention:
            self.log.warning(
                "%d record(s) of %s need a person: they have no usable id, or failed %d recovery attempts; "
                "see the %s_dead_letters table (docs/recovery.md)",
                result.needs_attention,
                self.servicetitan_conn_id,
                self.max_attempts,
                self.table_prefix,
            )
        return result.as_dict()
