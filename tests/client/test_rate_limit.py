"""The client's rate limiting against the sandbox over HTTP: a shared per-tenant limiter before
every request, a 429 pausing every worker of the tenant, the token endpoint paced on its own.

Timing inside one process uses injected clocks and sleeps; the multi-process test counts the
sandbox's 429s, never the time it took.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Callable
from typing import Any

import pytest
import redis

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.client.client import ServiceTitanClient, api_rate_limiter, api_rate_limiter_name
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.errors import RateLimitExceededError, RetryExhaustedError
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from airflow_provider_servicetitan.resilience.ratelimit import RateLimiter
from airflow_provider_servicetitan.resilience.retry import RetryEvent, RetryPolicy
from airflow_provider_servicetitan.sandbox import SandboxServer
from tests.client import workers
from tests.helpers import credentials_for

CTX = multiprocessing.get_context("spawn")
START = 1_700_000_000.0


class Time:
    """Epoch seconds for the limiters and monotonic seconds for the retry policy; both move only
    when something sleeps."""

    def __init__(self) -> None:
        self.now = START
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def customers(client: ServiceTitanClient) -> str:
    return get_resource("customers").list_path(client.tenant_id)


def list_requests(sandbox: SandboxServer) -> int:
    calls: int = sandbox.admin.stats()["requests_by_endpoint"].get("list", 0)
    return calls


@pytest.fixture
def paced_client(
    redis_client: redis.Redis, key_prefix: str
) -> Callable[..., tuple[ServiceTitanClient, RateLimiter, Time]]:
    """A client whose limiter, retry policy and token manager run on one fake time."""
    built: list[ServiceTitanClient] = []

    def make(credentials: ServiceTitanCredentials, **policy: Any) -> tuple[ServiceTitanClient, RateLimiter, Time]:
        time = Time()
        limiter = api_rate_limiter(credentials, redis_client, namespace=key_prefix, clock=time, sleep=time.sleep)
        client = ServiceTitanClient(
            TokenManager(credentials, redis_client, namespace=key_prefix),
            breaker=CircuitBreaker(
                f"tenant-{credentials.tenant_id}",
                redis_client,
                config=BreakerConfig(failure_threshold=1),
                namespace=key_prefix,
                classify=classify_servicetitan_error,
            ),
            retry_policy=RetryPolicy(
                **{"max_attempts": 2, "base_delay": 0.01, "max_delay": 0.05, **policy},
                sleep=time.sleep,
                clock=time,
            ),
            rate_limiter=limiter,
        )
        built.append(client)
        return client, limiter, time

    yield make
    for client in built:
        client.close()


def test_a_429_pauses_every_worker_on_the_tenant(sandbox, paced_client, redis_client, key_prefix):
    sandbox.admin.set_faults(burst_429=1, burst_429_retry_after=2)
    credentials = credentials_for(sandbox)
    events: list[RetryEvent] = []
    client, limiter, time = paced_client(credentials, listener=events.append)
    other_worker = api_rate_limiter(credentials, redis_client, namespace=key_prefix, clock=time)

    assert client.request("GET", customers(client), params={"pageSize": 1})["data"]

    [event] = events
    assert event.rate_limited
    assert 2.0 <= event.delay <= 2.2  # the retry waits the Retry-After, jittered upwards
    pause = float(redis_client.hget(limiter.key, "paused_until") or 0) - START  # the 429 came at START
    assert 2.0 <= pause <= 2.2
    # another worker asking at the time of the 429 waits the pause out (and after the slot this
    # client's retry took at its end)
    time.now = START
    assert other_worker.peek() == pytest.approx(pause + limiter.interval, abs=1e-5)
    assert sandbox.admin.stats()["responses_429"] == 1


def test_429s_do_not_use_up_the_attempts_nor_open_the_breaker(sandbox, paced_client):
    sandbox.admin.set_faults(burst_429=4, burst_429_retry_after=1)
    client, _, _ = paced_client(credentials_for(sandbox), max_attempts=1)  # no retry of a failure at all

    assert client.request("GET", customers(client), params={"pageSize": 1})["data"]

    assert sandbox.admin.stats()["responses_429"] == 4
    assert client.breaker.state == BreakerState.CLOSED  # failure_threshold=1: a counted 429 would open it


def test_a_long_pause_is_handed_to_the_caller_without_sending(sandbox, paced_client, redis_client, key_prefix):
    credentials = credentials_for(sandbox)
    client, _, time = paced_client(credentials, max_retry_after=30.0)
    client.token_manager.get_token()
    # another worker was told to come back in 120 s
    api_rate_limiter(credentials, redis_client, namespace=key_prefix, clock=time).pause(120.0)

    with pytest.raises(RetryExhaustedError) as caught:
        client.request("GET", customers(client))

    error = caught.value.last_error
    assert isinstance(error, RateLimitExceededError)
    assert error.retry_after == pytest.approx(120.0, abs=1e-3)  # what an operator defers by
    assert "not sent" in str(error)
    assert list_requests(sandbox) == 0
    assert time.sleeps == []


def test_a_short_pause_is_waited_in_the_attempt(sandbox, paced_client, redis_client, key_prefix):
    credentials = credentials_for(sandbox)
    client, _, time = paced_client(credentials)
    api_rate_limiter(credentials, redis_client, namespace=key_prefix, clock=time).pause(1.5)

    assert client.request("GET", customers(client), params={"pageSize": 1})["data"]

    assert time.sleeps == [pytest.approx(1.5, abs=1e-5)]
    assert list_requests(sandbox) == 1


def test_the_limiter_key_is_per_app_key_and_tenant_and_holds_no_secret(sandbox, make_client, redis_client, key_prefix):
    first, second = credentials_for(sandbox, index=0), credentials_for(sandbox, index=1)
    other_app = dataclasses.replace(first, app_key="another-app-key")
    other_client_id = dataclasses.replace(first, client_id="another-client-id")

    assert api_rate_limiter_name(first) == api_rate_limiter_name(other_client_id)  # per app, not per client id
    assert api_rate_limiter_name(first) != api_rate_limiter_name(second)
    assert api_rate_limiter_name(first) != api_rate_limiter_name(other_app)

    client = make_client(first)
    client.rate_limiter = api_rate_limiter(first, redis_client, namespace=key_prefix)
    client.request("GET", customers(client), params={"pageSize": 1})
    keys = list(redis_client.scan_iter(match=f"{key_prefix}:ratelimit:*"))
    assert sorted(k.decode().split(":")[3] for k in keys) == ["api", "token"]
    for key in keys:
        assert redis_client.pttl(key) > 0
        for secret in (first.app_key, first.client_id, first.client_secret):
            assert secret.encode() not in key


# -- token endpoint -----------------------------------------------------------------------------


def test_a_token_429_pauses_further_token_requests(start_sandbox):
    sandbox = start_sandbox(token_rate_limit=1)  # one token a minute
    manager = TokenManager(credentials_for(sandbox), None, token_rate_limit_per_second=100)
    manager.invalidate(manager.get_token())

    with pytest.raises(RateLimitExceededError) as refused:
        manager.get_token()
    assert refused.value.status == 429
    with pytest.raises(RateLimitExceededError) as paused:
        manager.get_token()

    assert paused.value.status is None
    assert "not sent" in str(paused.value)
    assert paused.value.retry_after is not None
    assert paused.value.retry_after > 10
    assert sandbox.admin.stats()["token_requests_total"] == 2
    manager.close()


def test_token_requests_are_paced(sandbox):
    time = Time()
    manager = TokenManager(credentials_for(sandbox), None, sleep=time.sleep, token_rate_limit_per_second=0.5)

    manager.invalidate(manager.get_token())
    manager.get_token()

    [waited] = time.sleeps  # the second request waited for its slot, the first did not
    assert 0.0 < waited <= 2.0
    manager.close()


# -- many processes, one tenant -----------------------------------------------------------------


def run_workers(
    sandbox: SandboxServer, redis_url: str, key_prefix: str, *, processes: int, calls: int, rate: float | None
) -> list[int]:
    fields = dataclasses.asdict(credentials_for(sandbox))
    path = f"/crm/v2/tenant/{fields['tenant_id']}/customers"
    start, results = CTX.Barrier(processes), CTX.Queue()
    procs = [
        CTX.Process(target=workers.call_paced, args=(fields, redis_url, key_prefix, path, calls, rate, start, results))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=180) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert all(proc.exitcode == 0 for proc in procs)
    return outcomes


def test_eight_processes_on_one_tenant_are_never_refused(start_sandbox, redis_url, key_prefix):
    sandbox = start_sandbox(rate_limit=20)

    outcomes = run_workers(sandbox, redis_url, key_prefix, processes=8, calls=15, rate=20)

    assert outcomes == [15] * 8
    stats = sandbox.admin.stats()
    assert stats["responses_429"] == 0
    assert stats["requests_by_endpoint"]["list"] == 120


def test_without_the_limiter_the_same_load_is_refused(start_sandbox, redis_url, key_prefix):
    # The control of the test above: the same workers without a limiter provoke 429s (and get
    # through them by retrying).
    sandbox = start_sandbox(rate_limit=20)

    outcomes = run_workers(sandbox, redis_url, key_prefix, processes=8, calls=15, rate=None)

    assert outcomes == [15] * 8
    assert sandbox.admin.stats()["responses_429"] > 0


@pytest.mark.parametrize("wait", [-1.0, float("nan"), float("inf")])
def test_a_bad_max_rate_limit_wait_is_refused(sandbox, wait):
    credentials = credentials_for(sandbox)
    with pytest.raises(ValueError, match="max_rate_limit_wait"):
        ServiceTitanClient(
            TokenManager(credentials, None),
            breaker=CircuitBreaker("t", None),
            retry_policy=RetryPolicy(),
            max_rate_limit_wait=wait,
        )


def test_max_retry_after_caps_the_wait_inside_an_attempt(sandbox):
    credentials = credentials_for(sandbox)
    client = ServiceTitanClient(
        TokenManager(credentials, None),
        breaker=CircuitBreaker("t", None),
        retry_policy=RetryPolicy(max_retry_after=2.0),
        rate_limiter=api_rate_limiter(credentials, None),
    )
    assert client.max_rate_limit_wait == 2.0
    client.close()
