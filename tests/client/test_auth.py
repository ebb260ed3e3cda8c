"""Token management against the sandbox and the real Redis: shared, single-flight, self-healing."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing

import pytest
import redis

from airflow_provider_servicetitan.client.auth import TokenManager, token_cache_key, token_fingerprint
from airflow_provider_servicetitan.errors import InvalidCredentialsError, TokenRefreshError
from tests.client import workers
from tests.helpers import FakeClock, credentials_for

CTX = multiprocessing.get_context("spawn")


def token_requests(sandbox) -> int:
    return sandbox.admin.stats()["token_requests_issued"]


def test_many_processes_share_one_token_and_recover_from_revocation(sandbox, redis_url, key_prefix):
    processes, calls = 8, 25
    fields = dataclasses.asdict(credentials_for(sandbox))
    path = f"/crm/v2/tenant/{fields['tenant_id']}/customers"
    start, between = CTX.Barrier(processes), CTX.Barrier(processes + 1)
    resume, results = CTX.Event(), CTX.Queue()
    procs = [
        CTX.Process(
            target=workers.call_in_phases,
            args=(fields, redis_url, key_prefix, path, calls, start, between, resume, results),
        )
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()

    between.wait(timeout=120)
    assert token_requests(sandbox) == 1
    sandbox.admin.revoke_tokens()
    resume.set()

    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert outcomes == [2 * calls] * processes
    assert all(proc.exitcode == 0 for proc in procs)
    assert 2 <= token_requests(sandbox) <= 3


def test_wrong_secret_fails_fast_across_processes(sandbox, redis_url, key_prefix):
    processes = 4
    fields = dataclasses.asdict(credentials_for(sandbox, client_secret="not-the-secret"))
    start, results = CTX.Barrier(processes), CTX.Queue()
    procs = [
        CTX.Process(target=workers.get_token_expecting_rejection, args=(fields, redis_url, key_prefix, start, results))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)

    assert outcomes == ["InvalidCredentialsError"] * processes
    assert sandbox.admin.stats()["token_requests_total"] <= 2


def test_fixed_secret_is_not_blocked_by_the_old_rejection(sandbox, redis_client, key_prefix):
    good = credentials_for(sandbox)
    bad = dataclasses.replace(good, client_secret="not-the-secret")
    with pytest.raises(InvalidCredentialsError) as caught:
        TokenManager(bad, redis_client, namespace=key_prefix).get_token()
    assert "not-the-secret" not in str(caught.value)

    assert TokenManager(good, redis_client, namespace=key_prefix).get_token()


def test_token_is_renewed_before_it_expires(start_sandbox, make_client):
    sandbox = start_sandbox(token_expires_in=100)
    clock = FakeClock()
    client = make_client(credentials_for(sandbox), shared=None, clock=clock)
    path = f"/crm/v2/tenant/{client.tenant_id}/customers"

    for _ in range(12):  # 12 x 10 s: longer than a token lives, without waiting for real
        client.request("GET", path, params={"pageSize": 1})
        clock.now += 10
        sandbox.admin.advance_clock(10)

    stats = sandbox.admin.stats()
    assert stats["requests_by_status"].get("401", 0) == 0
    assert stats["token_requests_issued"] == 2


def test_token_is_stored_encrypted_with_a_ttl_shorter_than_its_life(sandbox, redis_client, key_prefix):
    credentials = credentials_for(sandbox)
    manager = TokenManager(credentials, redis_client, namespace=key_prefix)
    token = manager.get_token()

    keys = list(redis_client.scan_iter(match=f"{key_prefix}:token:*"))
    assert keys == [token_cache_key(key_prefix, credentials).encode()]
    stored = redis_client.hgetall(keys[0])
    assert token.encode() not in b"".join(stored.values())
    assert credentials.client_secret.encode() not in b"".join(stored.values())
    assert credentials.client_id.encode() not in keys[0]
    assert stored[b"fp"] == token_fingerprint(token).encode()
    assert 0 < redis_client.pttl(keys[0]) <= (900 - 60) * 1000


def test_a_second_worker_reuses_the_shared_token(sandbox, redis_client, key_prefix):
    credentials = credentials_for(sandbox)
    first = TokenManager(credentials, redis_client, namespace=key_prefix).get_token()
    second = TokenManager(credentials, redis_client, namespace=key_prefix).get_token()
    assert first == second
    assert token_requests(sandbox) == 1


def test_invalidate_drops_only_the_token_that_failed(sandbox, redis_client, key_prefix):
    credentials = credentials_for(sandbox)
    worker_a = TokenManager(credentials, redis_client, namespace=key_prefix)
    worker_b = TokenManager(credentials, redis_client, namespace=key_prefix)
    old = worker_a.get_token()
    assert worker_b.get_token() == old

    worker_a.invalidate(old)
    new = worker_a.get_token()
    worker_b.invalidate(old)  # a late 401 for the old token must not drop the new one

    assert new != old
    assert worker_b.get_token() == new
    assert token_requests(sandbox) == 2


def test_waiter_gives_up_when_renewer_holds_the_lock_too_long(sandbox, redis_client, key_prefix):
    credentials = credentials_for(sandbox)
    redis_client.set(f"{token_cache_key(key_prefix, credentials)}:lock", "someone-else", px=60_000)
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.now += seconds

    manager = TokenManager(credentials, redis_client, namespace=key_prefix, clock=clock, sleep=sleep, wait_seconds=2)
    with pytest.raises(TokenRefreshError, match="another worker"):
        manager.get_token()
    assert token_requests(sandbox) == 0


def test_lock_of_a_dead_renewer_expires_and_another_takes_over(sandbox, redis_client, key_prefix):
    credentials = credentials_for(sandbox)
    lock_key = f"{token_cache_key(key_prefix, credentials)}:lock"
    redis_client.set(lock_key, "dead-worker", px=60_000)
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.now += seconds
        redis_client.delete(lock_key)  # the lock's TTL ran out while we waited

    manager = TokenManager(credentials, redis_client, namespace=key_prefix, clock=clock, sleep=sleep)
    assert manager.get_token()
    assert token_requests(sandbox) == 1


def test_redis_unreachable_keeps_tokens_per_process(sandbox, caplog):
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    manager = TokenManager(credentials_for(sandbox), dead)
    with caplog.at_level(logging.WARNING):
        first = manager.get_token()
        second = manager.get_token()
    assert first == second
    assert token_requests(sandbox) == 1
    warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]  # cache and limiter: one
    assert len(warnings) == 1


def test_token_endpoint_down_is_a_retryable_refresh_error(start_sandbox, redis_client, key_prefix):
    sandbox = start_sandbox(fault_overrides={"token_error_rate": 1.0})
    with pytest.raises(TokenRefreshError) as caught:
        TokenManager(credentials_for(sandbox), redis_client, namespace=key_prefix).get_token()
    assert caught.value.retryable
