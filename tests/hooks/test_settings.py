"""The ``[servicetitan]`` config section: one Redis and namespace for the hook, the Test button and the DAG."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
import redis
from airflow.models.connection import Connection

from airflow_provider_servicetitan.hooks import settings
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.notifications import ServiceTitanAlertNotifier, dead_letter_alert
from airflow_provider_servicetitan.sandbox import SandboxServer
from tests.helpers import sandbox_extra

NAMESPACE_ENV = "AIRFLOW__SERVICETITAN__REDIS_NAMESPACE"
CONN_ID_ENV = "AIRFLOW__SERVICETITAN__REDIS_CONN_ID"


@pytest.fixture(autouse=True)
def no_configured_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the defaults, whatever the environment of the run."""
    monkeypatch.delenv(NAMESPACE_ENV, raising=False)
    monkeypatch.delenv(CONN_ID_ENV, raising=False)


def servicetitan_connection(sandbox: SandboxServer) -> Connection:
    """A ServiceTitan connection as the connection form submits it, with the id the Test button gives it."""
    cred = sandbox.credentials[0]
    extra = sandbox_extra(sandbox)
    return Connection(
        conn_id=f"st_button_{uuid.uuid4().hex[:8]}",
        conn_type="servicetitan",
        login=cred.client_id,
        password=cred.client_secret,
        extra=json.dumps(extra),
    )


def keys_under(client: redis.Redis, namespace: str, kind: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{namespace}:{kind}:*"))


def test_the_defaults_without_configuration() -> None:
    assert settings.redis_conn_id() == "redis_default"
    assert settings.redis_namespace() == "servicetitan"
    hook = ServiceTitanHook("st_any")
    assert (hook.redis_conn_id, hook.namespace) == ("redis_default", "servicetitan")


def test_the_environment_sets_both(monkeypatch) -> None:
    monkeypatch.setenv(NAMESPACE_ENV, "servicetitan_prod")
    monkeypatch.setenv(CONN_ID_ENV, "redis_shared")

    hook = ServiceTitanHook("st_any")

    assert (hook.redis_conn_id, hook.namespace) == ("redis_shared", "servicetitan_prod")


def test_arguments_given_in_code_win(monkeypatch) -> None:
    monkeypatch.setenv(NAMESPACE_ENV, "servicetitan_prod")
    monkeypatch.setenv(CONN_ID_ENV, "redis_shared")

    hook = ServiceTitanHook("st_any", None, namespace="mine")

    assert (hook.redis_conn_id, hook.namespace) == (None, "mine")


def test_an_empty_redis_conn_id_means_per_process_state(monkeypatch) -> None:
    monkeypatch.setenv(CONN_ID_ENV, "")

    assert ServiceTitanHook("st_any").redis_conn_id is None


@pytest.mark.parametrize("bad", ["has space", "x" * 201, "a{b}", "   "])
def test_a_bad_namespace_is_refused_naming_the_setting(monkeypatch, bad) -> None:
    monkeypatch.setenv(NAMESPACE_ENV, bad)

    with pytest.raises(
        ValueError, match=r"\[servicetitan\] redis_namespace \(AIRFLOW__SERVICETITAN__REDIS_NAMESPACE\)"
    ):
        ServiceTitanHook("st_any")


def test_the_test_button_and_a_task_share_tokens_and_breaker_in_the_configured_namespace(
    monkeypatch, sandbox, redis_connection, key_prefix, redis_client
) -> None:
    monkeypatch.setenv(NAMESPACE_ENV, key_prefix)
    monkeypatch.setenv(CONN_ID_ENV, redis_connection)
    conn = servicetitan_connection(sandbox)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn.conn_id.upper()}", conn.get_uri())

    ok, message = conn.test_connection()  # what the Test button runs: the hook built with its defaults

    assert ok, message
    [token_key] = keys_under(redis_client, key_prefix, "token")
    assert keys_under(redis_client, key_prefix, "breaker")
    assert sandbox.admin.stats()["token_requests_issued"] == 1
    with ServiceTitanHook(conn.conn_id) as task_hook:  # what an operator builds, with the same defaults
        client = task_hook.get_conn()
        assert client.request("GET", f"/crm/v2/tenant/{client.tenant_id}/customers", params={"pageSize": 1})
        assert task_hook.namespace == key_prefix
    assert keys_under(redis_client, key_prefix, "token") == [token_key]
    assert sandbox.admin.stats()["token_requests_issued"] == 1, "the task reused the button's token"


def test_the_notifier_deduplicates_in_the_configured_namespace(monkeypatch, redis_connection, key_prefix) -> None:
    monkeypatch.setenv(NAMESPACE_ENV, key_prefix)
    monkeypatch.setenv(CONN_ID_ENV, redis_connection)

    dedup = ServiceTitanAlertNotifier().dedup

    assert dedup.namespace == key_prefix
    assert dedup.first_in_window("servicetitan_acme|retries_exhausted|")
    assert not ServiceTitanAlertNotifier().dedup.first_in_window("servicetitan_acme|retries_exhausted|")


def test_a_bad_namespace_is_logged_by_the_notifier_which_still_alerts(monkeypatch, redis_connection, caplog) -> None:
    monkeypatch.setenv(NAMESPACE_ENV, "has space")
    monkeypatch.setenv(CONN_ID_ENV, redis_connection)
    notifier = ServiceTitanAlertNotifier()

    with caplog.at_level(logging.ERROR, logger="airflow_provider_servicetitan.notifications.notifier"):
        assert notifier.send(dead_letter_alert("servicetitan_acme", 80, 50))
        assert not notifier.send(dead_letter_alert("servicetitan_acme", 80, 50)), "deduplicated in this process"

    assert "[servicetitan] redis_namespace (AIRFLOW__SERVICETITAN__REDIS_NAMESPACE) must match" in caplog.text
