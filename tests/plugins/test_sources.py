"""The page reads the breaker and token the hook uses: same breaker name, configuration and keys."""

from __future__ import annotations

import pytest
import redis

from airflow_provider_servicetitan.client.auth.cache import token_cache_key
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.plugins.sources import build_target
from airflow_provider_servicetitan.sandbox import SandboxServer
from tests.helpers import sandbox_extra, set_connection


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, key_prefix: str) -> str:
    cred = sandbox.credentials[0]
    extra = {**sandbox_extra(sandbox, 0), "breaker": {"failure_threshold": 7, "open_seconds": 12}}
    set_connection(
        monkeypatch,
        "st_health",
        conn_type="servicetitan",
        login=cred.client_id,
        password=cred.client_secret,
        extra=extra,
    )
    monkeypatch.setenv("AIRFLOW__SERVICETITAN__REDIS_NAMESPACE", key_prefix)
    return "st_health"


def test_the_target_is_the_hooks_breaker_and_token_key(
    connection: str, redis_connection: str, redis_client: redis.Redis, key_prefix: str
) -> None:
    with ServiceTitanHook(connection, redis_connection) as hook:
        breaker = hook.get_conn().breaker
        expected_token_key = token_cache_key(hook.namespace, hook.get_credentials())

        target = build_target(connection, ("connection",), redis_client)

    assert target.problem is None
    assert target.breaker is not None
    assert target.breaker.name == breaker.name
    assert target.breaker.redis_keys == breaker.redis_keys
    assert target.breaker.config == breaker.config
    assert target.token_key == expected_token_key


def test_an_unusable_connection_is_a_problem_without_its_values(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, redis_client: redis.Redis
) -> None:
    cred = sandbox.credentials[0]
    set_connection(
        monkeypatch,
        "st_bad",
        conn_type="servicetitan",
        login=cred.client_id,
        password="bad secret with spaces\n",
        extra={**sandbox_extra(sandbox, 0), "tenant_id": "12x"},
    )

    target = build_target("st_bad", ("variable",), redis_client)
    missing = build_target("st_missing", ("variable",), redis_client)

    assert target.breaker is None
    assert target.problem is not None
    assert "tenant_id" in target.problem
    assert "bad secret" not in target.problem
    assert missing.breaker is None
    assert missing.problem is not None
    assert "cannot be read" in missing.problem
