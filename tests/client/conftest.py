"""Fixtures for the client layer: a running sandbox and clients built against it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.sandbox import SandboxCredential, SandboxServer


def credentials_for(sandbox: SandboxServer, index: int = 0, **changes: Any) -> ServiceTitanCredentials:
    cred: SandboxCredential = sandbox.credentials[index]
    fields: dict[str, Any] = {
        "client_id": cred.client_id,
        "client_secret": cred.client_secret,
        "app_key": cred.app_key,
        "tenant_id": cred.tenant_id,
        "environment": "integration",
        "auth_url": sandbox.token_url,
        "api_url": sandbox.base_url,
        **changes,
    }
    return ServiceTitanCredentials(**fields)


@pytest.fixture
def make_client(redis_client: redis.Redis, key_prefix: str) -> Iterator[Callable[..., ServiceTitanClient]]:
    """Build a client for a credential with fast, deterministic-enough test settings."""
    clients: list[ServiceTitanClient] = []

    def make(
        credentials: ServiceTitanCredentials,
        *,
        shared: redis.Redis | None = redis_client,
        retry_policy: RetryPolicy | None = None,
        breaker_config: BreakerConfig | None = None,
        **token_args: Any,
    ) -> ServiceTitanClient:
        tokens = TokenManager(credentials, shared, namespace=key_prefix, **token_args)
        breaker = CircuitBreaker(
            f"tenant-{credentials.tenant_id}",
            shared,
            config=breaker_config or BreakerConfig(failure_threshold=50, minimum_calls=1000),
            namespace=key_prefix,
        )
        client = ServiceTitanClient(
            tokens,
            breaker=breaker,
            retry_policy=retry_policy or RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05, max_elapsed=30),
            timeout=(2.0, 5.0),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
