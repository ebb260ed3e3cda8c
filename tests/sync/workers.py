"""A sync run in a child process, so a test can kill it with SIGKILL mid-export."""

from __future__ import annotations

from typing import Any

from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.resilience.breaker import CircuitBreaker
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.storage.store import SyncStore
from airflow_provider_servicetitan.sync.engine import sync_resource


def sync_in_child(fields: dict[str, Any], store_url: str, resource: str, run_id: str) -> None:
    credentials = ServiceTitanCredentials(**fields)
    client = ServiceTitanClient(
        TokenManager(credentials, None),
        breaker=CircuitBreaker("child", None, classify=classify_servicetitan_error),
        retry_policy=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05),
        timeout=(2.0, 120.0),
    )
    with SyncStore(store_url) as store:
        sync_resource(client, store, credential="st_child", resource=resource, run_id=run_id)
