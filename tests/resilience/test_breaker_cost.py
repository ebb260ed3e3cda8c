"""What a shared breaker costs, and what its savings must never cost.

A process admits closed-state calls from the state its last Redis round trip returned (for at most
``closed_cache_seconds``) and buffers successes while the window holds no failure. Checked here,
on the injected clock, never with sleeps: the staleness bound (an open breaker stops every worker
within ``closed_cache_seconds``, or sooner through a failure or a flush), buffered successes
counted at their own completion times, the round trips per call (counted by a redis-py connection
class, whatever client the breaker builds from it), and TTLs set when keys are created and
refreshed only when low, never per call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import redis

from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, BreakerTransition, CircuitBreaker
from airflow_provider_servicetitan.resilience.breaker.redis_backend import BREAKER_LUA, _flush_at_exit

from .test_breaker import Clock, Service, attempt, breaker_warnings, make_breaker, refusal, summary


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["redis", "local"])
def client(
    request: pytest.FixtureRequest, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> Iterator[redis.Redis | None]:
    """The shared breaker and the per-process one, as in test_breaker.py: the rules are the same."""
    yield redis_client if request.param == "redis" else None
    assert breaker_warnings(caplog) == []


class CountingConnection(redis.Connection):
    """A redis-py connection that counts the commands it sends, by name."""

    sent: ClassVar[Counter[str]] = Counter()

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        CountingConnection.sent[str(args[0]).upper()] += 1
        super().send_command(*args, **kwargs)


@pytest.fixture
def counting_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client whose connections (and those of the fail-fast copy the breaker makes) count."""
    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection))
    client.script_load(BREAKER_LUA)  # so that no EVALSHA is refused and sent again
    CountingConnection.sent.clear()
    yield client
    client.close()


def round_trips() -> int:
    """Script calls sent so far (the breaker's only commands besides loading the script)."""
    return CountingConnection.sent["EVALSHA"] + CountingConnection.sent["EVAL"]


# --- staleness bound -----------------------------------------------------------------------


def test_an_open_breaker_stops_a_worker_within_closed_cache_seconds(
    redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    worker = make_breaker(redis_client, key_prefix, clock, closed_cache_seconds=2)
    operator = make_breaker(redis_client, key_prefix, clock)
    service = Service()
    assert attempt(worker, service.ok) == "ok"  # a round trip at START: closed
    operator.force_open(60)
    clock.advance(1.5)
    assert attempt(worker, service.ok) == "ok"  # stale, within the bound
    clock.advance(0.5)  # closed_cache_seconds after the worker's last round trip
    assert refusal(worker).retry_after == 58
    assert service.calls == 2
    clock.advance(58)
    assert worker.state == "half_open"


def test_a_failure_is_recorded_at_once_and_learns_the_open_state(
    redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    worker = make_breaker(redis_client, key_prefix, clock, closed_cache_seconds=60, failure_threshold=2)
    other = make_breaker(redis_client, key_prefix, clock, closed_cache_seconds=60, failure_threshold=2)
    service = Service()
    for _ in range(5):
        assert attempt(worker, service.ok) == "ok"  # buffered
    assert attempt(other, service.fail) == "raised"
    assert attempt(worker, service.fail) == "raised"  # not delayed behind the buffer: opens it now
    assert worker.backend == "redis"
    refusal(worker)
    # other still trusts the closed state its own failure returned; its next failure is stale (dropped)
    # and brings back the open state at once.
    assert attempt(other, service.fail) == "raised"
    refusal(other)


def test_a_full_batch_of_successes_is_written_and_learns_the_open_state(
    redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    worker = make_breaker(redis_client, key_prefix, clock, closed_cache_seconds=60, success_batch_size=3)
    operator = make_breaker(redis_client, key_prefix, clock)
    service = Service()
    assert attempt(worker, service.ok) == "ok"
    operator.force_open(30)
    assert [attempt(worker, service.ok) for _ in range(3)] == ["ok", "ok", "refused"]  # the 3rd success flushed


def test_half_open_admission_is_never_cached(redis_client: redis.Redis, key_prefix: str, clock: Clock) -> None:
    first = make_breaker(redis_client, key_prefix, clock, closed_cache_seconds=60, failure_threshold=1)
    second = make_breaker(redis_client, key_prefix, clock, closed_cache_seconds=60, failure_threshold=1)
    attempt(first, Service().fail)
    refusal(second)
    clock.advance(30)
    probe = second.acquire()
    assert probe.is_probe
    refusal(first)  # one probe at a time across workers
    probe.success()
    assert attempt(first, Service().ok) == "ok"


def test_stale_buffered_successes_are_dropped(redis_client: redis.Redis, key_prefix: str, clock: Clock) -> None:
    """Successes buffered under a closed state that has since ended never reach the next one."""
    transitions: list[BreakerTransition] = []
    worker = make_breaker(
        redis_client,
        key_prefix,
        clock,
        closed_cache_seconds=60,
        failure_threshold=100,
        minimum_calls=2,
        failure_rate_threshold=0.5,
    )
    operator = make_breaker(
        redis_client, key_prefix, clock, transitions=transitions, failure_threshold=100, minimum_calls=2
    )
    service = Service()
    for _ in range(10):
        attempt(worker, service.ok)  # buffered under the first closed state
    operator.force_open(10)
    operator.reset()
    attempt(operator, service.fail)  # the new closed state: one failure
    worker.flush()  # stale: dropped
    attempt(operator, service.ok)
    assert operator.state == "open"  # 1 failure / 2 calls: the ten old successes did not count
    assert summary(transitions)[-1] == ("closed", "open", "failure_rate")


# --- buffered successes are counted at their own times ---------------------------------------


def test_buffered_successes_count_in_the_failure_rate_until_they_leave_the_window(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(
        client,
        key_prefix,
        clock,
        transitions=transitions,
        failure_threshold=100,
        minimum_calls=2,
        failure_rate_threshold=0.5,
        window_seconds=60,
        closed_cache_seconds=120,
    )
    service = Service()
    assert [attempt(breaker, service.ok) for _ in range(2)] == ["ok", "ok"]  # at 0, buffered
    clock.advance(30)
    assert attempt(breaker, service.ok) == "ok"  # at 30
    clock.advance(29.5)
    assert attempt(breaker, service.fail) == "raised"  # 1 failure / 4 calls
    assert breaker.state == "closed"
    clock.advance(0.5)  # the two successes of time 0 leave the window now, not earlier or later
    assert attempt(breaker, service.fail) == "raised"  # 2 failures / 3 calls
    assert summary(transitions) == [("closed", "open", "failure_rate")]
    assert transitions[0].at == Clock.START + 60


# --- round trips ---------------------------------------------------------------------------


def test_closed_state_round_trips(counting_client: redis.Redis, key_prefix: str, clock: Clock) -> None:
    breaker = make_breaker(
        counting_client, key_prefix, clock, closed_cache_seconds=5, success_batch_size=10, failure_threshold=100
    )
    service = Service()
    assert [attempt(breaker, service.ok) for _ in range(100)] == ["ok"] * 100
    assert round_trips() == 1 + 10  # the first admission, then one per batch of ten successes
    assert attempt(breaker, service.fail) == "raised"
    assert round_trips() == 12  # the failure, at once; its admission came from the cache
    assert [attempt(breaker, service.ok) for _ in range(5)] == ["ok"] * 5
    assert round_trips() == 17  # a failure in the window: each success is written at once
    clock.advance(60)  # the failure left the window; the cached state is too old
    assert [attempt(breaker, service.ok) for _ in range(10)] == ["ok"] * 10
    assert round_trips() == 19  # one admission (learns: quiet again), then one batch
    with pytest.raises(KeyboardInterrupt):
        breaker.call(service.fail, KeyboardInterrupt())
    assert round_trips() == 19  # an ignored outcome costs nothing
    assert counting_client.exists(breaker.redis_keys[0]) == 1


def test_every_call_asks_redis_without_a_cache(counting_client: redis.Redis, key_prefix: str, clock: Clock) -> None:
    breaker = make_breaker(counting_client, key_prefix, clock, closed_cache_seconds=0, success_batch_size=1)
    service = Service()
    assert [attempt(breaker, service.ok) for _ in range(10)] == ["ok"] * 10
    assert round_trips() == 20


# --- TTLs ----------------------------------------------------------------------------------


def test_ttls_are_set_when_keys_are_created_and_refreshed_only_when_low(
    redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    config: dict[str, Any] = {
        "failure_threshold": 1000,
        "minimum_calls": 1000,
        "key_ttl_seconds": 3600,
        "closed_cache_seconds": 0,
        "success_batch_size": 1,
    }
    breaker = make_breaker(redis_client, key_prefix, clock, **config)
    keys = breaker.redis_keys[:3]  # state, calls, failures (no probe while closed)
    service = Service()
    attempt(breaker, service.ok)
    attempt(breaker, service.fail)
    assert all(0 < redis_client.ttl(key) <= 3600 for key in keys)
    for key in keys:
        redis_client.expire(key, 3000)  # lower than any TTL the breaker sets: a rewrite would show
    for _ in range(20):
        clock.advance(10)
        attempt(breaker, service.ok)
        attempt(breaker, service.fail)
    assert all(0 < redis_client.ttl(key) <= 3000 for key in keys)
    # The TTL is refreshed once less than (key_ttl + longest deadline) / 2 = (3600 + 600) / 2 is left
    # by the breaker's clock: 1500 s after it was set at START.
    clock.now = Clock.START + 1500
    attempt(breaker, service.ok)
    assert all(0 < redis_client.ttl(key) <= 3000 for key in keys)
    clock.advance(0.5)
    attempt(breaker, service.ok)
    assert all(redis_client.ttl(key) > 3000 for key in keys)


def test_an_expired_window_set_is_created_again_with_a_ttl(
    redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    breaker = make_breaker(redis_client, key_prefix, clock, failure_threshold=1000, minimum_calls=1000)
    state, calls, failures, _probes = breaker.redis_keys
    attempt(breaker, Service().fail)
    redis_client.delete(calls, failures)  # as if trimmed empty: Redis drops an empty set
    clock.advance(61)  # the window is empty by the breaker's clock too
    attempt(breaker, Service().fail)
    assert all(redis_client.ttl(key) > 0 for key in (state, calls, failures))


def test_successes_buffered_before_the_keys_vanished_are_dropped(
    redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    """Keys gone (expired, or Redis restarted empty): the closed state the successes were buffered
    in is gone. A flush while running starts a fresh state hash; the flush at exit creates nothing."""
    breaker = make_breaker(redis_client, key_prefix, clock)
    state, calls, _failures, _probes = breaker.redis_keys
    assert [attempt(breaker, Service().ok) for _ in range(3)] == ["ok"] * 3
    redis_client.delete(*breaker.redis_keys)
    breaker.flush()
    assert redis_client.exists(state, calls) == 1  # the state hash only
    assert redis_client.ttl(state) > 0
    assert [attempt(breaker, Service().ok) for _ in range(3)] == ["ok"] * 3
    redis_client.delete(*breaker.redis_keys)
    _flush_at_exit()  # what runs when the process exits
    assert redis_client.exists(*breaker.redis_keys) == 0


def test_config_validates_cache_and_batch() -> None:
    assert (BreakerConfig().closed_cache_seconds, BreakerConfig().success_batch_size) == (1.0, 100)
    BreakerConfig(closed_cache_seconds=0)
    for bad in ({"closed_cache_seconds": -1}, {"closed_cache_seconds": float("inf")}, {"success_batch_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BreakerConfig(**bad)
    with pytest.raises(ValueError, match="success_batch_size"):
        BreakerConfig(success_batch_size=1001)
    CircuitBreaker("api", None).flush()  # nothing is buffered per process: nothing to do
