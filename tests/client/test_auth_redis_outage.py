"""The token cache during a Redis outage, with a client as a caller may build it (redis-py's
defaults: retries with backoff): one connection attempt per re-check interval, one warning per
outage, one "answers again"; tokens keep coming from the sandbox meanwhile."""

from __future__ import annotations

import logging

import pytest
import redis

from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS
from airflow_provider_servicetitan.sandbox import SandboxServer
from tests.helpers import FakeClock, credentials_for
from tests.redis_outage import SwitchableProxy

AUTH_LOGGER = "airflow_provider_servicetitan.client.auth"


def token_requests(sandbox: SandboxServer) -> int:
    requests: int = sandbox.admin.stats()["token_requests_issued"]
    return requests


def renew(manager: TokenManager) -> str:
    """Drop the current token as ServiceTitan would refuse it, and get another: every Redis step
    of the token cache (invalidate, rejection check, read, lock, store, unlock)."""
    manager.invalidate(manager.get_token())
    return manager.get_token()


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == AUTH_LOGGER and r.levelno == level]


def answers_again(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in records(caplog, logging.INFO) if "answers again" in m]


def test_a_redis_outage_costs_one_connection_per_recheck_interval(
    sandbox: SandboxServer,
    proxy: SwitchableProxy,
    caller_client: redis.Redis,
    redis_client: redis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=AUTH_LOGGER)
    clock = FakeClock()
    credentials = credentials_for(sandbox)
    manager = TokenManager(credentials, caller_client, namespace=key_prefix, clock=clock)
    proxy.switch(up=False)

    tokens = {renew(manager) for _ in range(5)}
    assert len(tokens) == 5
    assert token_requests(sandbox) == 6  # the first token and five renewals, each asked by this process
    assert proxy.connections == 1  # one attempt, no retries, nothing more within the interval
    clock.advance(DEFAULT_REDIS_RECHECK_SECONDS - 0.001)
    renew(manager)
    assert proxy.connections == 1
    clock.advance(0.001)
    renew(manager)
    assert proxy.connections == 2  # re-checked once, still down

    [warning] = records(caplog, logging.WARNING)
    assert warning.startswith(f"token cache of tenant {credentials.tenant_id}: Redis unreachable (ConnectionError")
    assert "tokens are cached per process" in warning
    assert not answers_again(caplog)

    proxy.switch(up=True)
    clock.advance(DEFAULT_REDIS_RECHECK_SECONDS)
    shared_token = renew(manager)
    assert answers_again(caplog) == [
        f"token cache of tenant {credentials.tenant_id}: Redis answers again; its state is shared by all workers again"
    ]
    requests_before = token_requests(sandbox)
    other_worker = TokenManager(credentials, redis_client, namespace=key_prefix)
    assert other_worker.get_token() == shared_token  # the cache is shared again
    assert token_requests(sandbox) == requests_before

    proxy.switch(up=False)  # a second outage: a second warning
    renew(manager)
    assert len(records(caplog, logging.WARNING)) == 2
