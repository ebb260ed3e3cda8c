"""Worker processes for the multi-process token tests (importable, so they work with spawn)."""

from __future__ import annotations

import multiprocessing.synchronize
from typing import Any

import redis

from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.client.client import ServiceTitanClient, api_rate_limiter
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.errors import InvalidCredentialsError
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker
from airflow_provider_servicetitan.resilience.retry import RetryPolicy


def _client(fields: dict[str, Any], redis_url: str, namespace: str) -> ServiceTitanClient:
    credentials = ServiceTitanCredentials(**fields)
    shared = redis.Redis.from_url(redis_url)
    return ServiceTitanClient(
        TokenManager(credentials, shared, namespace=namespace),
        breaker=CircuitBreaker(
            "workers",
            shared,
            config=BreakerConfig(failure_threshold=50, minimum_calls=1000),
            namespace=namespace,
            classify=classify_servicetitan_error,
        ),
        retry_policy=RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05, max_elapsed=30),
    )


def call_in_phases(
    fields: dict[str, Any],
    redis_url: str,
    namespace: str,
    path: str,
    calls: int,
    start: multiprocessing.synchronize.Barrier,
    between: multiprocessing.synchronize.Barrier,
    resume: multiprocessing.synchronize.Event,
    results: Any,
) -> None:
    """Make ``calls`` calls, wait while the parent revokes tokens, then make ``calls`` more."""
    client = _client(fields, redis_url, namespace)
    start.wait()
    ok = sum(1 for _ in range(calls) if client.request("GET", path, params={"pageSize": 1}) is not None)
    between.wait()
    resume.wait(60)
    ok += sum(1 for _ in range(calls) if client.request("GET", path, params={"pageSize": 1}) is not None)
    results.put(ok)


def get_token_expecting_rejection(
    fields: dict[str, Any],
    redis_url: str,
    namespace: str,
    start: multiprocessing.synchronize.Barrier,
    results: Any,
) -> None:
    """Ask for a token with bad credentials; report the error class name."""
    client = _client(fields, redis_url, namespace)
    start.wait()
    try:
        client.token_manager.get_token()
    except InvalidCredentialsError as exc:
        results.put(type(exc).__name__)
    else:
        results.put("no error")


def call_paced(
    fields: dict[str, Any],
    redis_url: str,
    namespace: str,
    path: str,
    calls: int,
    rate_per_second: float | None,
    start: multiprocessing.synchronize.Barrier,
    results: Any,
) -> None:
    """Make ``calls`` calls through the tenant's shared rate limiter (``None``: no limiter); report
    how many succeeded."""
    credentials = ServiceTitanCredentials(**fields)
    shared = redis.Redis.from_url(redis_url)
    limiter = (
        None
        if rate_per_second is None
        else api_rate_limiter(credentials, shared, rate_per_second=rate_per_second, namespace=namespace)
    )
    client = ServiceTitanClient(
        TokenManager(credentials, shared, namespace=namespace),
        breaker=CircuitBreaker(
            "paced",
            shared,
            config=BreakerConfig(failure_threshold=50, minimum_calls=1000),
            namespace=namespace,
            classify=classify_servicetitan_error,
        ),
        retry_policy=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, max_elapsed=60),
        rate_limiter=limiter,
    )
    client.token_manager.get_token()  # every worker ready to send before the start
    start.wait()
    ok = sum(1 for _ in range(calls) if client.request("GET", path, params={"pageSize": 1}) is not None)
    results.put(ok)
