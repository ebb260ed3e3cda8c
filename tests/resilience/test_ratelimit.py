"""RateLimiter: GCRA in Redis (and its per-process fallback), timed by an injected clock.

Two limiter instances with the same name and namespace stand for two workers: they share one
Redis key. No test sleeps or measures wall time: ``acquire`` sleeps through an injected function.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_servicetitan.resilience.ratelimit import (
    DEFAULT_SAFETY_MARGIN,
    RateLimiter,
    RateLimitWaitTooLong,
)
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS
from tests.redis_outage import SwitchableProxy

LOGGER = "airflow_provider_servicetitan.resilience.ratelimit"


def approx(expected: object) -> object:
    """Equal to a few microseconds: times are doubles near 1.7e9 s, and Redis stores them as text."""
    return pytest.approx(expected, abs=1e-5)


class Clock:
    """Epoch seconds that move only when a test (or a fake sleep) says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


Make = Callable[..., RateLimiter]


@pytest.fixture(params=["redis", "local"])
def make(request: pytest.FixtureRequest, key_prefix: str) -> Make:
    """Limiters on the shared Redis, or per process: the same rules either way."""
    shared = request.getfixturevalue("redis_client") if request.param == "redis" else None
    local: dict[str, RateLimiter] = {}

    def build(clock: Clock, *, name: str = "api:1", **options: object) -> RateLimiter:
        options = {"safety_margin": 0.0, **options}
        limiter = RateLimiter(name, shared, namespace=key_prefix, clock=clock, sleep=clock.sleep, **options)  # type: ignore[arg-type]
        assert limiter.backend == request.param
        if shared is None:  # per process: "another worker" of the same process is the same state
            return local.setdefault(name, limiter)
        return limiter

    return build


def test_a_burst_goes_at_once_then_one_slot_per_interval(make: Make) -> None:
    clock = Clock()
    limiter = make(clock, rate_per_second=10, burst=3)

    waits = [limiter.reserve() for _ in range(6)]

    assert waits == approx([0.0, 0.0, 0.0, 0.1, 0.2, 0.3])


def test_the_burst_refills_at_the_rate(make: Make) -> None:
    clock = Clock()
    limiter = make(clock, rate_per_second=10, burst=3)
    for _ in range(3):
        limiter.reserve()

    clock.advance(0.1)  # one slot back
    assert limiter.reserve() == 0.0
    assert limiter.reserve() == approx(0.1)
    clock.advance(10.0)  # a quiet period: the whole burst again, never more
    assert [limiter.reserve() for _ in range(4)] == approx([0.0, 0.0, 0.0, 0.1])


def test_the_safety_margin_slows_the_rate_and_the_burst_defaults_to_half_the_rate(make: Make) -> None:
    clock = Clock()
    limiter = make(clock, rate_per_second=60, safety_margin=DEFAULT_SAFETY_MARGIN)

    assert (limiter.effective_rate, limiter.burst) == (approx(57.0), 30)
    waits = [limiter.reserve() for _ in range(32)]
    assert waits[:30] == [0.0] * 30
    assert waits[30:] == approx([1 / 57, 2 / 57])


def test_two_workers_share_the_slots(make: Make) -> None:
    clock = Clock()
    worker_a = make(clock, rate_per_second=5, burst=2)
    worker_b = make(clock, rate_per_second=5, burst=2)

    assert worker_a.reserve() == 0.0
    assert worker_b.reserve() == 0.0
    assert worker_a.reserve() == approx(0.2)
    assert worker_b.reserve() == approx(0.4)


def test_a_pause_by_one_worker_holds_every_worker(make: Make) -> None:
    clock = Clock()
    worker_a = make(clock, rate_per_second=10, burst=5)
    worker_b = make(clock, rate_per_second=10, burst=5)
    assert worker_b.reserve() == 0.0

    assert worker_a.pause(2.0) == approx(2.0)

    assert worker_b.peek() == approx(2.0)
    assert worker_b.reserve() == approx(2.0)
    clock.advance(2.0)
    # after the pause the slots come back one per interval, without a burst
    assert [worker_b.reserve() for _ in range(2)] == approx([0.1, 0.2])


def test_a_shorter_pause_does_not_shorten_a_longer_one(make: Make) -> None:
    clock = Clock()
    worker_a = make(clock, rate_per_second=10)
    worker_b = make(clock, rate_per_second=10)

    worker_a.pause(5.0)
    worker_b.pause(1.0)

    assert worker_a.peek() == approx(5.0)


def test_acquire_sleeps_the_wait_and_returns_it(make: Make) -> None:
    clock = Clock()
    limiter = make(clock, rate_per_second=4, burst=1)

    assert limiter.acquire() == 0.0
    assert limiter.acquire() == approx(0.25)

    assert clock.sleeps == [approx(0.25)]  # nothing slept for a free slot


def test_a_wait_longer_than_max_wait_takes_nothing(make: Make) -> None:
    clock = Clock()
    limiter = make(clock, rate_per_second=10, burst=1)
    limiter.pause(3.0)

    with pytest.raises(RateLimitWaitTooLong) as caught:
        limiter.acquire(max_wait=1.0)

    assert caught.value.retry_after == approx(3.0)
    assert clock.sleeps == []
    assert limiter.reserve(max_wait=3.0) == approx(3.0)  # the refused call took no slot
    assert limiter.reserve() == approx(3.1)


def test_different_names_do_not_share(make: Make) -> None:
    clock = Clock()
    tenant_1 = make(clock, name="api:1", rate_per_second=1, burst=1)
    tenant_2 = make(clock, name="api:2", rate_per_second=1, burst=1)
    tenant_1.pause(30.0)

    assert tenant_2.reserve() == 0.0


def test_the_redis_key_is_namespaced_and_expires_after_its_state(redis_client: redis.Redis, key_prefix: str) -> None:
    clock = Clock()
    limiter = RateLimiter("api:7:abc", redis_client, rate_per_second=10, namespace=key_prefix, clock=clock)
    limiter.pause(100.0)

    assert limiter.key == f"{key_prefix}:ratelimit:api:7:abc"
    assert list(redis_client.scan_iter(match=f"{key_prefix}:*")) == [limiter.key.encode()]
    ttl_ms = redis_client.pttl(limiter.key)
    assert 100_000 < ttl_ms <= (100 + limiter.tolerance + 60) * 1000 + 1


def test_without_a_clock_the_redis_server_times_the_slots(redis_client: redis.Redis, key_prefix: str) -> None:
    # Worker clocks are not used at all: a limiter without a clock reads Redis TIME in the script.
    limiter = RateLimiter("api:1", redis_client, rate_per_second=2, burst=1, safety_margin=0, namespace=key_prefix)

    first, second = limiter.reserve(), limiter.reserve()

    assert first == 0.0
    assert 0.0 < second <= 0.5
    assert float(redis_client.hget(limiter.key, "tat") or 0) > 1_700_000_000


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=60),
    rate=st.floats(min_value=1.0, max_value=100.0),
    burst=st.integers(min_value=1, max_value=20),
)
def test_property_granted_slots_never_exceed_the_burst_plus_the_rate(
    gaps: list[float], rate: float, burst: int
) -> None:
    clock = Clock()
    limiter = RateLimiter("api:p", None, rate_per_second=rate, burst=burst, safety_margin=0.0, clock=clock)
    sends: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        sends.append(clock.now + limiter.reserve())

    sends.sort()
    # in every window [sends[i], sends[j]] at most burst + rate * length calls are sent
    for i in range(len(sends)):
        for j in range(i, len(sends)):
            # (times near 1.7e9 s carry ~2.4e-7 s of float resolution, which adds up slot after
            # slot: allow 0.1 ms, less than a hundredth of a slot at these rates)
            assert j - i + 1 <= burst + rate * (sends[j] - sends[i] + 1e-4)


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "api:has space"}, "name"),
        ({"name": ""}, "name"),
        ({"namespace": "a b"}, "namespace"),
        ({"rate_per_second": 0}, "rate_per_second"),
        ({"rate_per_second": math.inf}, "rate_per_second"),
        ({"rate_per_second": True}, "rate_per_second"),
        ({"burst": 0}, "burst"),
        ({"burst": 1.5}, "burst"),
        ({"safety_margin": 1.0}, "safety_margin"),
        ({"safety_margin": -0.1}, "safety_margin"),
        ({"sleep": None}, "sleep"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict[str, object], message: str) -> None:
    settings_: dict[str, object] = {"name": "api:1", "rate_per_second": 10, **kwargs}
    name = settings_.pop("name")
    with pytest.raises(ValueError, match=message):
        RateLimiter(name, None, **settings_)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf])
def test_a_bad_pause_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        RateLimiter("api:1", None, rate_per_second=1).pause(seconds)


def test_a_bad_max_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="max_wait"):
        RateLimiter("api:1", None, rate_per_second=1).reserve(max_wait=-1)


# -- Redis outage -------------------------------------------------------------------------------


def test_an_unreachable_redis_falls_back_to_the_same_rules_per_process(
    proxy: SwitchableProxy,
    caller_client: redis.Redis,
    redis_client: redis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    limiter = RateLimiter(
        "api:1", caller_client, rate_per_second=10, burst=2, safety_margin=0, namespace=key_prefix, clock=clock
    )
    assert limiter.reserve() == 0.0
    assert limiter.backend == "redis"
    proxy.switch(up=False)

    # the local state starts afresh: a burst of 2, then one slot per 0.1 s
    waits = [limiter.reserve() for _ in range(4)]

    assert limiter.backend == "local"
    assert waits == approx([0.0, 0.0, 0.1, 0.2])
    assert proxy.connections == 2  # the first connection, then one failed try: no retry within the interval
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "rate limiter 'api:1': Redis unreachable" in warnings[0]
    assert "limiting this process alone" in warnings[0]

    limiter.pause(5.0)  # a 429 during the outage holds this process
    assert limiter.peek() == approx(5.0)

    proxy.switch(up=True)
    clock.advance(DEFAULT_REDIS_RECHECK_SECONDS)
    other_worker = RateLimiter(
        "api:1", redis_client, rate_per_second=10, burst=2, safety_margin=0, namespace=key_prefix, clock=clock
    )
    assert other_worker.reserve() == 0.0
    assert limiter.reserve() == approx(0.0)  # back on the shared state
    assert limiter.backend == "redis"
    assert other_worker.reserve() == approx(0.1)
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_pause_reaches_the_local_state_too(
    proxy: SwitchableProxy, caller_client: redis.Redis, key_prefix: str
) -> None:
    # Paused while Redis answered, then Redis fails: this process still honours the pause.
    clock = Clock()
    limiter = RateLimiter("api:1", caller_client, rate_per_second=10, namespace=key_prefix, clock=clock)
    limiter.pause(3.0)
    proxy.switch(up=False)

    assert limiter.peek() > 0.0
    assert limiter.backend == "local"


def test_without_redis_it_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    limiter = RateLimiter("api:1", None, rate_per_second=10)
    limiter.reserve()
    assert limiter.backend == "local"
    assert not [r for r in caplog.records if r.name == LOGGER]
