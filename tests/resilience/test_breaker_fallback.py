"""When Redis is unreachable the breaker keeps working per process, and goes back to Redis later.

Redis is made unreachable in two honest ways: a client pointed at a closed port, and a TCP proxy in
front of the test Redis that can be switched off (it then accepts connections and drops them),
which also counts how often the breaker tried Redis. The proxy is also used by the Redis outage
tests of the token cache, alert deduplication and :mod:`.shared_state`. The re-check interval runs
on the breaker's injected fake clock, so "not yet" and "now" are exact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

from airflow_provider_servicetitan.errors import ServiceTitanServerError
from airflow_provider_servicetitan.resilience.breaker import BreakerTransition
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS
from tests.redis_outage import SwitchableProxy, fast_failing_client, redis_db

from .test_breaker import BREAKER_LOGGER, Clock, Service, attempt, breaker_warnings, make_breaker, refusal, summary


@pytest.fixture
def proxied_client(proxy: SwitchableProxy, redis_url: str) -> Iterator[redis.Redis]:
    client = fast_failing_client("127.0.0.1", proxy.port, db=redis_db(redis_url))
    yield client
    client.close()


def test_calls_flow_and_the_local_breaker_opens_when_redis_is_unreachable(
    key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=BREAKER_LOGGER)
    clock = Clock()
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(
        fast_failing_client("127.0.0.1", 1), key_prefix, clock, transitions=transitions, failure_threshold=3
    )
    service = Service()
    assert [attempt(breaker, service.ok) for _ in range(20)] == ["ok"] * 20
    assert breaker.backend == "local"
    assert [attempt(breaker, service.fail) for _ in range(3)] == ["raised"] * 3
    refusal(breaker)
    assert service.calls == 23
    for _ in range(3):  # Redis is tried again now and then, and still fails: no new warning
        clock.advance(5)
        refusal(breaker)
    assert breaker.state == "open"
    assert breaker.backend == "local"
    assert summary(transitions) == [("closed", "open", "failure_threshold")]
    [warning] = breaker_warnings(caplog)
    assert "Redis unreachable" in warning.getMessage()
    assert "ConnectionError" in warning.getMessage()


def test_without_a_client_the_breaker_is_local_and_quiet(key_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=BREAKER_LOGGER)
    breaker = make_breaker(None, key_prefix, Clock())
    assert breaker.call(Service().ok) == "ok"
    assert breaker.backend == "local"
    assert breaker.redis_keys == ()
    assert breaker_warnings(caplog) == []


def test_redis_is_tried_again_at_most_once_per_recheck_interval(
    proxy: SwitchableProxy, proxied_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=BREAKER_LOGGER)
    proxy.switch(up=False)
    clock = Clock()
    breaker = make_breaker(proxied_client, key_prefix, clock, redis_recheck_seconds=5)
    service = Service()
    assert attempt(breaker, service.ok) == "ok"
    assert proxy.connections == 1
    for _ in range(50):
        assert attempt(breaker, service.ok) == "ok"
    clock.advance(4.5)
    assert attempt(breaker, service.ok) == "ok"
    assert proxy.connections == 1
    clock.advance(0.5)
    assert attempt(breaker, service.ok) == "ok"
    assert proxy.connections == 2
    assert breaker.backend == "local"
    assert len(breaker_warnings(caplog)) == 1


def test_returns_to_the_shared_state_when_redis_answers_again(
    proxy: SwitchableProxy,
    proxied_client: redis.Redis,
    redis_client: redis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=BREAKER_LOGGER)
    clock = Clock()
    worker = make_breaker(proxied_client, key_prefix, clock, failure_threshold=2, redis_recheck_seconds=5)
    other_worker = make_breaker(redis_client, key_prefix, clock, failure_threshold=2)
    service = Service()
    assert attempt(worker, service.ok) == "ok"
    assert worker.backend == "redis"

    proxy.switch(up=False)
    # Admitted from the closed state of the last round trip; its failure cannot reach Redis and is
    # dropped (an outcome admitted by Redis is never replayed locally).
    assert attempt(worker, service.fail) == "raised"
    assert worker.backend == "local"
    assert attempt(worker, service.fail) == "raised"  # admitted and counted locally only
    proxy.switch(up=True)
    assert attempt(worker, service.ok) == "ok"
    assert worker.backend == "local"  # not rechecked before the interval
    clock.advance(5)
    assert attempt(worker, service.fail) == "raised"
    assert worker.backend == "redis"
    assert worker.state == "closed"  # one failure in Redis; the outage's local failure is not carried over

    attempt(other_worker, service.fail)  # the second shared failure opens it for everybody
    clock.advance(worker.config.closed_cache_seconds)  # once what worker last learned is too old to trust
    refusal(worker)
    assert len(breaker_warnings(caplog)) == 1
    assert any("answers again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_an_outcome_that_cannot_reach_redis_is_dropped_and_the_call_is_unharmed(
    proxy: SwitchableProxy, proxied_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=BREAKER_LOGGER)
    breaker = make_breaker(proxied_client, key_prefix, Clock(), failure_threshold=1)
    service = Service()

    def fail_while_redis_goes_away() -> None:
        proxy.switch(up=False)
        service.fail()

    with pytest.raises(ServiceTitanServerError):
        breaker.call(fail_while_redis_goes_away)
    assert breaker.backend == "local"
    assert breaker.state == "closed"  # the Redis-admitted failure is not replayed locally
    assert attempt(breaker, service.ok) == "ok"
    assert len(breaker_warnings(caplog)) == 1


def test_a_client_with_redis_py_defaults_costs_one_connection_per_recheck_interval(
    proxy: SwitchableProxy,
    caller_client: redis.Redis,
    redis_client: redis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=BREAKER_LOGGER)
    proxy.switch(up=False)
    clock = Clock()
    breaker = make_breaker(caller_client, key_prefix, clock)
    service = Service()

    assert [attempt(breaker, service.ok) for _ in range(30)] == ["ok"] * 30
    assert proxy.connections == 1  # the caller's retries are not inherited
    clock.advance(DEFAULT_REDIS_RECHECK_SECONDS - 0.5)
    assert [attempt(breaker, service.ok) for _ in range(30)] == ["ok"] * 30
    assert proxy.connections == 1
    clock.advance(0.5)
    assert attempt(breaker, service.ok) == "ok"
    assert proxy.connections == 2  # one re-check, still down: no new warning
    assert breaker.backend == "local"

    proxy.switch(up=True)
    assert attempt(breaker, service.ok) == "ok"
    assert breaker.backend == "local"
    clock.advance(DEFAULT_REDIS_RECHECK_SECONDS)
    assert attempt(breaker, service.ok) == "ok"
    assert breaker.backend == "redis"
    breaker.flush()  # the success was buffered: write it
    assert redis_client.exists(*breaker.redis_keys) > 0

    proxy.switch(up=False)  # a second outage: a second warning
    clock.advance(breaker.config.closed_cache_seconds)  # what the breaker learned from Redis is too old
    assert [attempt(breaker, service.ok) for _ in range(10)] == ["ok"] * 10
    assert breaker.backend == "local"
    assert proxy.connections == 4
    assert len(breaker_warnings(caplog)) == 2
    [answers_again] = [r for r in caplog.records if r.name == BREAKER_LOGGER and r.levelno == logging.INFO]
    assert "Redis answers again" in answers_again.getMessage()
    caller_client.close()
