"""The API client against the sandbox over HTTP: complete data under faults, honest errors."""

from __future__ import annotations

import logging

import pytest
import requests
from requests.adapters import HTTPAdapter

from airflow_provider_servicetitan.catalog import RESOURCES
from airflow_provider_servicetitan.errors import (
    CircuitBreakerOpenError,
    InvalidCredentialsError,
    PermissionDeniedError,
    RateLimitExceededError,
    RetryExhaustedError,
    ServiceTitanServerError,
)
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig
from airflow_provider_servicetitan.resilience.retry import RetryEvent, RetryPolicy
from tests.helpers import credentials_for


def truth_ids(sandbox, tenant_id: int, resource: str, *, include_deleted: bool) -> list[int]:
    rows = sandbox.admin.truth(tenant_id, resource)
    return sorted(r["id"] for r in rows if include_deleted or not r.get("deleted"))


@pytest.mark.parametrize("profile", ["none", "flaky", "ratelimited"])
def test_export_returns_exactly_the_truth(start_sandbox, make_client, profile):
    sandbox = start_sandbox(faults=profile, records=300)
    client = make_client(credentials_for(sandbox))

    ids = [record["id"] for page in client.export("customers") for record in page.data]

    assert sorted(ids) == truth_ids(sandbox, client.tenant_id, "customers", include_deleted=True)
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("profile", ["flaky", "ratelimited"])
def test_paging_returns_exactly_the_truth(start_sandbox, make_client, profile):
    sandbox = start_sandbox(faults=profile, records=300)
    client = make_client(credentials_for(sandbox, index=1))

    ids = [record["id"] for page in client.pages("jobs", page_size=40) for record in page.data]

    assert sorted(ids) == truth_ids(sandbox, client.tenant_id, "jobs", include_deleted=False)


def test_export_resumes_from_a_bookmark(start_sandbox, make_client):
    sandbox = start_sandbox(export_page_size=25)
    client = make_client(credentials_for(sandbox))
    pages = client.export("invoices")
    first = next(pages)
    pages.close()
    assert first.has_more

    rest = [r["id"] for page in client.export("invoices", continue_from=first.continue_from) for r in page.data]

    all_ids = [r["id"] for r in first.data] + rest
    assert sorted(all_ids) == truth_ids(sandbox, client.tenant_id, "invoices", include_deleted=True)


def test_rate_limit_waits_at_least_retry_after(start_sandbox, make_client):
    sandbox = start_sandbox()
    sandbox.admin.set_faults(burst_429=3, burst_429_retry_after=1)
    events: list[RetryEvent] = []
    client = make_client(
        credentials_for(sandbox),
        retry_policy=RetryPolicy(
            max_attempts=5, base_delay=0.01, max_delay=0.05, max_elapsed=30, listener=events.append
        ),
    )

    client.request("GET", f"/crm/v2/tenant/{client.tenant_id}/customers", params={"pageSize": 1})

    waits = [e for e in events if isinstance(e.error, RateLimitExceededError)]
    assert len(waits) == 3
    assert all(e.delay >= 1 for e in waits)


def test_permission_denied_is_not_retried(start_sandbox, make_client):
    sandbox = start_sandbox()
    tenant = sandbox.credentials[0].tenant_id
    sandbox.admin.set_faults(unlicensed_modules={str(tenant): ["accounting"]})
    client = make_client(credentials_for(sandbox))

    with pytest.raises(PermissionDeniedError) as caught:
        next(client.export("invoices"))

    assert caught.value.trace_id
    assert sandbox.admin.stats()["requests_by_status"]["403"] == 1


def test_revoked_token_is_renewed_once_and_the_call_repeated(sandbox, make_client):
    client = make_client(credentials_for(sandbox))
    path = f"/crm/v2/tenant/{client.tenant_id}/customers"
    client.request("GET", path, params={"pageSize": 1})
    sandbox.admin.revoke_tokens()

    assert client.request("GET", path, params={"pageSize": 1})["data"]

    stats = sandbox.admin.stats()
    assert stats["requests_by_status"]["401"] == 1
    assert stats["token_requests_issued"] == 2


def test_app_key_rejected_twice_means_invalid_credentials(sandbox, make_client):
    client = make_client(credentials_for(sandbox, app_key="wrong-app-key"))

    with pytest.raises(InvalidCredentialsError) as caught:
        client.request("GET", f"/crm/v2/tenant/{client.tenant_id}/customers")

    assert "wrong-app-key" not in str(caught.value)
    assert sandbox.admin.stats()["requests_by_status"]["401"] == 2


def test_outage_opens_the_breaker_and_stops_calls(start_sandbox, make_client):
    sandbox = start_sandbox()
    sandbox.admin.set_faults(error_rate=1.0)
    client = make_client(
        credentials_for(sandbox),
        breaker_config=BreakerConfig(failure_threshold=3, open_seconds=300),
        retry_policy=RetryPolicy(max_attempts=10, base_delay=0.0, max_delay=0.01),
    )
    path = f"/crm/v2/tenant/{client.tenant_id}/customers"

    with pytest.raises(RetryExhaustedError) as caught:
        client.request("GET", path)

    assert isinstance(caught.value.__cause__, CircuitBreakerOpenError)
    assert client.breaker.state == "open"
    assert (
        sandbox.admin.stats()["requests_by_status"].get("500", 0)
        + sandbox.admin.stats()["requests_by_status"].get("503", 0)
        + sandbox.admin.stats()["requests_by_status"].get("502", 0)
        == 3
    )


def test_server_errors_exhaust_retries_with_the_trace_id(start_sandbox, make_client):
    sandbox = start_sandbox()
    sandbox.admin.set_faults(error_rate=1.0)
    client = make_client(credentials_for(sandbox), retry_policy=RetryPolicy(max_attempts=2, base_delay=0.0))

    with pytest.raises(RetryExhaustedError) as caught:
        client.request("GET", f"/crm/v2/tenant/{client.tenant_id}/customers")

    assert caught.value.attempts == 2
    assert isinstance(caught.value.last_error, ServiceTitanServerError)
    assert caught.value.last_error.trace_id


def test_get_by_ids_fetches_in_chunks_of_fifty(start_sandbox, make_client):
    sandbox = start_sandbox(records=130)
    client = make_client(credentials_for(sandbox))
    wanted = truth_ids(sandbox, client.tenant_id, "customers", include_deleted=False)[:120]

    found = client.get_by_ids("customers", wanted)

    assert sorted(r["id"] for r in found) == wanted
    assert sandbox.admin.stats()["requests_by_endpoint"]["list"] == 3


def test_no_secret_or_token_in_debug_logs(start_sandbox, make_client, caplog, capsys):
    sandbox = start_sandbox(faults="flaky")
    credentials = credentials_for(sandbox)
    client = make_client(credentials)
    with caplog.at_level(logging.DEBUG):
        for page in client.export("customers"):
            assert page.data is not None
        sandbox.admin.revoke_tokens()
        client.request("GET", f"/crm/v2/tenant/{client.tenant_id}/customers", params={"pageSize": 1})
        token = client.token_manager.get_token()
    captured = capsys.readouterr()
    text = "\n".join(r.getMessage() for r in caplog.records) + captured.out + captured.err

    assert len(caplog.records) > 0
    for secret in (credentials.client_secret, credentials.app_key, token):
        assert secret not in text


def test_catalogue_paths():
    customers = RESOURCES["customers"]
    assert customers.list_path(5) == "/crm/v2/tenant/5/customers"
    assert customers.export_path(5) == "/crm/v2/tenant/5/export/customers"
    with pytest.raises(ValueError, match="no export feed"):
        RESOURCES["employees"].export_path(5)
    assert {"customers", "locations", "jobs", "appointments", "invoices", "payments", "technicians"} <= set(RESOURCES)


def pooled_connections(session: requests.Session) -> int:
    """How many connection pools the session's adapters hold (closing a session empties them)."""
    adapters = [adapter for adapter in session.adapters.values() if isinstance(adapter, HTTPAdapter)]
    return sum(len(adapter.poolmanager.pools) for adapter in adapters)


def test_leaving_the_client_closes_its_session_and_the_token_session(sandbox, make_client):
    token_session = requests.Session()
    client = make_client(credentials_for(sandbox), session=token_session)

    with client:
        assert client.request("GET", RESOURCES["customers"].list_path(client.tenant_id), params={"pageSize": 1})
        assert pooled_connections(client.session) == 1
        assert pooled_connections(token_session) == 1

    assert pooled_connections(client.session) == 0
    assert pooled_connections(token_session) == 0
