"""A sync worker in its own process, built as a task builds it (hook, Redis, warehouse from Airflow
connections inherited through the environment), so a test can SIGKILL it."""

from __future__ import annotations

from collections.abc import Sequence

from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.hooks.warehouse import open_store
from airflow_provider_servicetitan.sync.engine import SyncEvents, sync_resource


def sync_as_worker(
    servicetitan_conn_id: str,
    redis_conn_id: str,
    namespace: str,
    warehouse_conn_id: str,
    table_prefix: str,
    resources: Sequence[str],
    run_id: str,
) -> None:
    events = SyncEvents()
    hook = ServiceTitanHook(servicetitan_conn_id, redis_conn_id, namespace=namespace, retry_listener=events.on_retry)
    store = open_store(warehouse_conn_id, table_prefix=table_prefix)
    try:
        client = hook.get_conn()
        for resource in resources:
            sync_resource(
                client, store, credential=servicetitan_conn_id, resource=resource, run_id=run_id, events=events
            )
    finally:
        store.close()
