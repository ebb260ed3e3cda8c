"""The Airflow hook: connection fields validated by name, Test button, shared state in Redis."""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.errors import CredentialValidationError
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from tests.helpers import set_connection


@pytest.fixture
def sandbox_connection(monkeypatch, sandbox) -> str:
    cred = sandbox.credentials[0]
    set_connection(
        monkeypatch,
        "st_test",
        conn_type="servicetitan",
        login=cred.client_id,
        password=cred.client_secret,
        extra={
            "app_key": cred.app_key,
            "tenant_id": str(cred.tenant_id),
            "environment": "integration",
            "auth_url": sandbox.token_url,
            "api_url": sandbox.base_url,
            "retry": {"preset": "aggressive", "max_attempts": 4},
            "breaker": {"failure_threshold": 7, "open_seconds": 12},
        },
    )
    return "st_test"


def make_hook(conn_id: str, redis_conn_id: str | None, key_prefix: str, **kwargs) -> ServiceTitanHook:
    return ServiceTitanHook(conn_id, redis_conn_id, namespace=key_prefix, **kwargs)


def test_get_conn_builds_a_working_client(sandbox_connection, redis_connection, key_prefix, sandbox, redis_client):
    hook = make_hook(sandbox_connection, redis_connection, key_prefix)

    client = hook.get_conn()

    assert isinstance(client, ServiceTitanClient)
    assert hook.get_conn() is client
    assert client.tenant_id == sandbox.credentials[0].tenant_id
    assert client.request("GET", f"/crm/v2/tenant/{client.tenant_id}/customers", params={"pageSize": 2})["data"]
    assert any(k.startswith(f"{key_prefix}:token:".encode()) for k in redis_client.scan_iter(match=f"{key_prefix}:*"))


def test_connection_settings_tune_retry_and_breaker(sandbox_connection, key_prefix):
    hook = make_hook(sandbox_connection, None, key_prefix)

    assert hook.get_retry_policy().max_attempts == 4
    assert hook.get_retry_policy().base_delay == RetryPolicy.aggressive().base_delay
    assert hook.get_breaker_config().failure_threshold == 7
    assert hook.get_breaker_config().open_seconds == 12


def test_code_overrides_connection_settings(sandbox_connection, key_prefix):
    policy, config = RetryPolicy.conservative(), BreakerConfig(failure_threshold=2)
    hook = make_hook(sandbox_connection, None, key_prefix, retry_policy=policy, breaker_config=config)

    assert hook.get_retry_policy() is policy
    assert hook.get_breaker_config() is config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"extra": {"app_key": "k", "tenant_id": "abc"}}, "tenant_id"),
        ({"extra": {"app_key": "k"}}, "tenant_id"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "environment": "staging"}}, "environment"),
        ({"extra": {"app_key": "", "tenant_id": "5"}}, "app_key"),
        ({"extra": {"app_key": "k", "tenant_id": "5"}, "password": ""}, "client_secret"),
        ({"extra": {"app_key": "k", "tenant_id": "5"}, "login": None}, "client_id"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "api_url": "ftp://x"}}, "api_url"),
        (
            {"extra": {"app_key": "k", "tenant_id": "5", "breaker": {"failure_treshold": 3}}},
            "extra.breaker.failure_treshold",
        ),
        ({"extra": {"app_key": "k", "tenant_id": "5", "breaker": {"failure_threshold": 0}}}, "extra.breaker"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "retry": {"preset": "reckless"}}}, "extra.retry.preset"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "retry": [1]}}, "extra.retry"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "retry": {"rate_limit_budget": 0}}}, "extra.retry"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "rate_limit_per_second": 0}}, "rate_limit_per_second"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "rate_limit_per_second": -5}}, "rate_limit_per_second"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "rate_limit_per_second": "fast"}}, "rate_limit_per_second"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "rate_limit_per_second": True}}, "rate_limit_per_second"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "rate_limit_per_second": "nan"}}, "rate_limit_per_second"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "rate_limit_per_second": [60]}}, "rate_limit_per_second"),
        ({"extra": {"app_key": "k", "tenant_id": "5", "rate_limit_per_second": 1e9}}, "rate_limit_per_second"),
        (
            {"extra": {"app_key": "k", "tenant_id": "5", "token_rate_limit_per_second": "0"}},
            "token_rate_limit_per_second",
        ),
    ],
)
def test_bad_field_is_named_before_any_network_call(monkeypatch, key_prefix, change, field):
    conn = {"conn_type": "servicetitan", "login": "cid", "password": "secret-value", **change}
    # The URLs point nowhere: validation must fail before anything is called.
    conn["extra"] = {"auth_url": "http://127.0.0.1:1/connect/token", **conn["extra"]}
    set_connection(monkeypatch, "st_bad", **conn)
    hook = make_hook("st_bad", None, key_prefix)

    with pytest.raises(CredentialValidationError) as caught:
        hook.get_conn()

    assert caught.value.field == field
    assert "st_bad" in str(caught.value)
    assert "secret-value" not in str(caught.value)


def test_test_connection_success(sandbox_connection, redis_connection, key_prefix, sandbox):
    ok, message = make_hook(sandbox_connection, redis_connection, key_prefix).test_connection()
    assert ok, message
    assert str(sandbox.credentials[0].tenant_id) in message


def test_test_connection_failure_names_the_problem(monkeypatch, sandbox, key_prefix):
    cred = sandbox.credentials[0]
    set_connection(
        monkeypatch,
        "st_wrong",
        conn_type="servicetitan",
        login=cred.client_id,
        password="wrong-secret",
        extra={
            "app_key": cred.app_key,
            "tenant_id": cred.tenant_id,
            "auth_url": sandbox.token_url,
            "api_url": sandbox.base_url,
        },
    )
    ok, message = make_hook("st_wrong", None, key_prefix).test_connection()
    assert not ok
    assert message.startswith("InvalidCredentialsError")
    assert "wrong-secret" not in message


def test_missing_redis_connection_falls_back_to_process_state(sandbox_connection, key_prefix, caplog):
    hook = make_hook(sandbox_connection, None, key_prefix)
    client = hook.get_conn()
    assert client.request("GET", f"/crm/v2/tenant/{client.tenant_id}/customers", params={"pageSize": 1})
    assert client.breaker.backend == "local"


def test_secrets_are_masked_in_logs(sandbox_connection, redis_connection, key_prefix, sandbox):
    from airflow.sdk._shared.secrets_masker import redact

    hook = make_hook(sandbox_connection, redis_connection, key_prefix)
    client = hook.get_conn()
    token = client.token_manager.get_token()
    cred = sandbox.credentials[0]

    for secret in (cred.client_secret, cred.app_key, token):
        assert redact(f"value={secret}") == "value=***"


def test_rate_limits_default_to_servicetitans_and_are_shared_per_tenant(
    sandbox_connection, redis_connection, key_prefix
):
    client = make_hook(sandbox_connection, redis_connection, key_prefix).get_conn()

    limiter = client.rate_limiter
    assert limiter is not None
    assert limiter.rate_per_second == 60.0
    assert limiter.effective_rate == pytest.approx(57.0)  # the safety margin
    assert limiter.backend == "redis"
    assert limiter.key.startswith(f"{key_prefix}:ratelimit:api:{client.tenant_id}:")
    assert client.credentials.app_key not in limiter.key
    token_limiter = client.token_manager.rate_limiter
    assert token_limiter is not None
    assert token_limiter.rate_per_second == 1.0


def test_rate_limits_from_the_connection_fields(monkeypatch, sandbox, key_prefix):
    cred = sandbox.credentials[0]
    set_connection(
        monkeypatch,
        "st_paced",
        conn_type="servicetitan",
        login=cred.client_id,
        password=cred.client_secret,
        extra={
            "app_key": cred.app_key,
            "tenant_id": cred.tenant_id,
            "auth_url": sandbox.token_url,
            "api_url": sandbox.base_url,
            "rate_limit_per_second": 20,
            "token_rate_limit_per_second": "0.5",  # as text, as a form may store it
            "retry": {"rate_limit_budget": 45},
        },
    )
    hook = make_hook("st_paced", None, key_prefix)

    assert (hook.get_rate_limit_per_second(), hook.get_token_rate_limit_per_second()) == (20.0, 0.5)
    assert hook.get_retry_policy().rate_limit_budget == 45
    client = hook.get_conn()
    assert client.rate_limiter is not None
    assert client.rate_limiter.rate_per_second == 20.0
    assert client.rate_limiter.backend == "local"  # no Redis connection: per process
    assert client.request("GET", f"/crm/v2/tenant/{client.tenant_id}/customers", params={"pageSize": 1})["data"]

    code = make_hook("st_paced", None, key_prefix, rate_limit_per_second=7, token_rate_limit_per_second=0.1)
    assert (code.get_rate_limit_per_second(), code.get_token_rate_limit_per_second()) == (7, 0.1)
