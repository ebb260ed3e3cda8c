"""The hook owns the client it builds: leaving the hook closes the client's HTTP sessions."""

from __future__ import annotations

import pytest
import requests
from requests.adapters import HTTPAdapter

from airflow_provider_servicetitan.catalog import RESOURCES
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.sandbox import SandboxServer
from tests.helpers import sandbox_extra, set_connection


def pooled_connections(session: requests.Session) -> int:
    """How many connection pools the session's adapters hold (closing a session empties them)."""
    adapters = [adapter for adapter in session.adapters.values() if isinstance(adapter, HTTPAdapter)]
    return sum(len(adapter.poolmanager.pools) for adapter in adapters)


def test_leaving_the_hook_closes_the_client_and_the_next_get_conn_builds_a_new_one(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, key_prefix: str
) -> None:
    cred = sandbox.credentials[0]
    extra = sandbox_extra(sandbox)
    set_connection(
        monkeypatch,
        "st_close",
        conn_type="servicetitan",
        login=cred.client_id,
        password=cred.client_secret,
        extra=extra,
    )

    with ServiceTitanHook("st_close", None, namespace=key_prefix) as hook:
        client = hook.get_conn()
        client.request("GET", RESOURCES["customers"].list_path(client.tenant_id), params={"pageSize": 1})
        assert pooled_connections(client.session) == 1

    assert pooled_connections(client.session) == 0
    assert hook.get_conn() is not client
    hook.close()


def test_closing_a_hook_that_built_no_client_does_nothing(key_prefix: str) -> None:
    hook = ServiceTitanHook("st_never_built", None, namespace=key_prefix)
    hook.close()
    assert "_client" not in vars(hook)
