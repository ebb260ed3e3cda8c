"""CircuitBreaker rules, against the real Redis and the per-process fallback alike.

The breakers run on an injected fake clock (passed to the Lua script instead of Redis ``TIME``)
that moves only when a test advances it, never with sleeps or real time: every time, deadline and
``retry_after`` below is exact, however loaded the machine. The helpers at the top are shared with
the other ``test_breaker_*`` modules.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.errors import (
    AuthenticationError,
    BadRequestError,
    CircuitBreakerOpenError,
    InvalidCredentialsError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitExceededError,
    ServiceTitanServerError,
)
from airflow_provider_servicetitan.resilience.breaker import (
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CallOutcome,
    CircuitBreaker,
    Classifier,
    count_every_error,
)

BREAKER_LOGGER = "airflow_provider_servicetitan.resilience.breaker"


class Clock:
    """The breaker's injected clock: epoch seconds that move only when the test advances them.

    Tests advance it by whole seconds or halves, which floats add exactly at this magnitude."""

    START = 1_700_000_000.0

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Service:
    """The protected function: counts how often the breaker let a call reach it."""

    def __init__(self) -> None:
        self.calls = 0

    def ok(self) -> str:
        self.calls += 1
        return "ok"

    def fail(self, error: BaseException | None = None) -> None:
        self.calls += 1
        raise error if error is not None else ServiceTitanServerError(status=500)


def make_breaker(
    client: redis.Redis | None,
    namespace: str,
    clock: Clock,
    *,
    name: str = "api",
    transitions: list[BreakerTransition] | None = None,
    classify: Classifier = count_every_error,
    **config: Any,
) -> CircuitBreaker:
    listeners = [transitions.append] if transitions is not None else []
    return CircuitBreaker(
        name,
        client,
        BreakerConfig(**config),
        namespace=namespace,
        listeners=listeners,
        clock=clock,
        classify=classify,
    )


def attempt(breaker: CircuitBreaker, fn: Callable[[], Any]) -> str:
    """``"ok"``, ``"raised"`` (fn ran and raised) or ``"refused"`` (fn was not called)."""
    try:
        breaker.call(fn)
    except CircuitBreakerOpenError:
        return "refused"
    except Exception:
        return "raised"
    return "ok"


def refusal(breaker: CircuitBreaker) -> CircuitBreakerOpenError:
    service = Service()
    with pytest.raises(CircuitBreakerOpenError) as refused:
        breaker.call(service.ok)
    assert service.calls == 0
    return refused.value


def summary(transitions: list[BreakerTransition]) -> list[tuple[str, str, str]]:
    return [(t.from_state.value, t.to_state.value, t.reason) for t in transitions]


def breaker_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The breaker's warnings logged by the test itself (also readable by a fixture's teardown)."""
    return [r for r in caplog.get_records("call") if r.name == BREAKER_LOGGER and r.levelno == logging.WARNING]


@pytest.fixture(params=["redis", "local"])
def client(
    request: pytest.FixtureRequest, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> Iterator[redis.Redis | None]:
    """The shared Redis breaker, and the per-process one: both follow the same rules. The Redis
    one must never have fallen back to the per-process one (a script error would, with a warning)."""
    yield redis_client if request.param == "redis" else None
    assert breaker_warnings(caplog) == []


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --- configuration and classification ------------------------------------------------------


def test_config_defaults() -> None:
    config = BreakerConfig()
    assert (config.failure_threshold, config.window_seconds, config.failure_rate_threshold) == (None, 60, 0.5)
    assert (config.minimum_calls, config.open_seconds, config.max_open_seconds) == (10, 30, 600)
    assert (config.open_backoff_multiplier, config.half_open_max_calls, config.probe_lease_seconds) == (2, 1, 30)
    assert config.key_ttl_seconds > config.max_open_seconds


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", 2.5),
        ("failure_threshold", True),
        ("window_seconds", 0),
        ("window_seconds", math.nan),
        ("window_seconds", math.inf),
        ("failure_rate_threshold", 0),
        ("failure_rate_threshold", 1.5),
        ("minimum_calls", 0),
        ("open_seconds", -1),
        ("max_open_seconds", 10),
        ("open_backoff_multiplier", 0.5),
        ("half_open_max_calls", 0),
        ("probe_lease_seconds", 0),
        ("key_ttl_seconds", 600),
        ("redis_recheck_seconds", 0),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        BreakerConfig(**{field: value})  # type: ignore[arg-type]


def test_open_duration_grows_and_is_capped() -> None:
    config = BreakerConfig(open_seconds=10, open_backoff_multiplier=3, max_open_seconds=100)
    assert [config.open_duration(k) for k in range(4)] == [10, 30, 90, 100]
    assert config.open_duration(10_000) == 100


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ServiceTitanServerError(status=500), CallOutcome.FAILURE),
        (NotFoundError(status=404), CallOutcome.FAILURE),
        (RateLimitExceededError(status=429), CallOutcome.FAILURE),
        (ValueError("bug"), CallOutcome.FAILURE),
        (KeyboardInterrupt(), CallOutcome.IGNORED),
        (SystemExit(1), CallOutcome.IGNORED),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_default_classification_counts_every_exception_and_no_interruption(
    error: BaseException, outcome: CallOutcome
) -> None:
    """The generic breaker knows no service: its creator passes a classifier to say more."""
    assert count_every_error(error) is outcome
    assert CircuitBreaker("api", None).classify is count_every_error


def test_rejects_a_classifier_that_is_not_callable() -> None:
    with pytest.raises(ValueError, match="classify"):
        CircuitBreaker("api", None, classify="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "has space", "{tag}", "x" * 201])
def test_rejects_names_that_cannot_be_a_key_segment(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker(name, None)
    with pytest.raises(ValueError, match="namespace"):
        CircuitBreaker("api", None, namespace=name)


# --- closed -> open ------------------------------------------------------------------------


def test_seed_scenario_three_failures_reach_fn_and_the_fourth_is_refused(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    breaker = make_breaker(client, key_prefix, clock, failure_threshold=3)
    service = Service()
    for _ in range(3):
        with pytest.raises(ServiceTitanServerError):
            breaker.call(service.fail)
    assert service.calls == 3
    with pytest.raises(CircuitBreakerOpenError) as refused:
        breaker.call(service.fail)
    assert service.calls == 3
    assert refused.value.breaker_name == "api"
    assert breaker.state == "open"


def test_opens_on_failure_count_inside_the_rolling_window(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(
        client, key_prefix, clock, transitions=transitions, failure_threshold=3, window_seconds=60, minimum_calls=100
    )
    service = Service()
    assert [attempt(breaker, service.fail) for _ in range(2)] == ["raised", "raised"]
    clock.advance(60)  # both failures leave the window
    assert [attempt(breaker, service.fail) for _ in range(2)] == ["raised", "raised"]
    assert breaker.state == "closed"
    clock.advance(59.5)  # still inside the window, by half a second
    assert attempt(breaker, service.fail) == "raised"
    assert breaker.state == "open"
    assert summary(transitions) == [("closed", "open", "failure_threshold")]


def test_opens_on_failure_rate_only_once_minimum_calls_were_seen(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(
        client,
        key_prefix,
        clock,
        transitions=transitions,
        failure_threshold=100,
        minimum_calls=4,
        failure_rate_threshold=0.5,
    )
    service = Service()
    assert [attempt(breaker, service.fail) for _ in range(3)] == ["raised"] * 3
    assert breaker.state == "closed"  # 100% failures, but only 3 calls
    assert attempt(breaker, service.ok) == "ok"  # 3 / 4 >= 0.5: even a success trips it
    assert breaker.state == "open"
    assert summary(transitions) == [("closed", "open", "failure_rate")]


def test_failure_rate_below_threshold_keeps_it_closed(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    breaker = make_breaker(
        client, key_prefix, clock, failure_threshold=100, minimum_calls=4, failure_rate_threshold=0.5
    )
    service = Service()
    outcomes = [attempt(breaker, fn) for fn in (service.ok, service.ok, service.ok, service.fail, service.fail)]
    assert outcomes == ["ok", "ok", "ok", "raised", "raised"]
    assert breaker.state == "closed"  # 2 / 5
    assert attempt(breaker, service.fail) == "raised"  # 3 / 6
    assert breaker.state == "open"


def test_by_default_only_the_failure_rate_opens_it(client: redis.Redis | None, key_prefix: str, clock: Clock) -> None:
    """A flaky service (many failures, a low rate) keeps its breaker closed; an outage opens it."""
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(client, key_prefix, clock, transitions=transitions, closed_cache_seconds=0)
    service = Service()
    for _ in range(20):  # 20 failures in a minute, one call in ten: a 10% error rate
        for fn in (service.fail, *[service.ok] * 9):
            attempt(breaker, fn)
        clock.advance(2)
    assert breaker.state == "closed"
    assert transitions == []

    clock.advance(61)  # the flaky minute has left the window; now every call fails
    outcomes = [attempt(breaker, service.fail) for _ in range(11)]

    # minimum_calls (10) failed calls, a 100% failure rate: open, and the 11th is refused.
    assert outcomes == ["raised"] * 10 + ["refused"]
    assert summary(transitions) == [("closed", "open", "failure_rate")]


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError(status=404),
        AuthenticationError(status=401),
        InvalidCredentialsError(status=401),
        BadRequestError(status=400),
        PermissionDeniedError(status=403),
        RateLimitExceededError(status=429),
        ValueError("bug in the caller"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_that_are_not_recorded_never_open_it(
    client: redis.Redis | None, key_prefix: str, clock: Clock, error: Exception
) -> None:
    breaker = make_breaker(
        client, key_prefix, clock, classify=classify_servicetitan_error, failure_threshold=1, minimum_calls=1
    )
    service = Service()
    for _ in range(5):
        with pytest.raises(type(error)):
            breaker.call(service.fail, error)
    assert service.calls == 5
    assert breaker.state == "closed"


def test_ignored_errors_count_as_nothing_and_other_errors_as_successes(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    breaker = make_breaker(
        client,
        key_prefix,
        clock,
        classify=classify_servicetitan_error,
        failure_threshold=100,
        minimum_calls=2,
        failure_rate_threshold=0.5,
    )
    service = Service()
    assert attempt(breaker, service.fail) == "raised"
    for ignored in (RateLimitExceededError(status=429), CircuitBreakerOpenError("downstream", 3)):
        for _ in range(5):
            attempt(breaker, functools.partial(service.fail, ignored))
    assert service.calls == 11
    assert breaker.state == "closed"  # still one call in the window, below minimum_calls
    assert attempt(breaker, lambda: service.fail(NotFoundError(status=404))) == "raised"
    assert breaker.state == "open"  # the 404 was the second call: 1 / 2 >= 0.5


def test_custom_classifiers_decide_what_counts(client: redis.Redis | None, key_prefix: str, clock: Clock) -> None:
    breaker = make_breaker(
        client,
        key_prefix,
        clock,
        failure_threshold=1,
        minimum_calls=100,
        classify=lambda error: CallOutcome.FAILURE if isinstance(error, KeyError) else CallOutcome.SUCCESS,
    )
    service = Service()
    assert attempt(breaker, service.fail) == "raised"  # a 500, not a failure for this breaker
    assert breaker.state == "closed"
    assert attempt(breaker, lambda: service.fail(KeyError("x"))) == "raised"
    assert breaker.state == "open"


# --- open -> half_open -> closed | open ----------------------------------------------------


def test_half_opens_after_open_seconds(client: redis.Redis | None, key_prefix: str, clock: Clock) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(client, key_prefix, clock, transitions=transitions, failure_threshold=1, open_seconds=30)
    attempt(breaker, Service().fail)
    clock.advance(29.5)
    assert breaker.state == "open"
    assert refusal(breaker).retry_after == 0.5
    clock.advance(0.5)
    assert breaker.state == "half_open"
    assert summary(transitions) == [("closed", "open", "failure_threshold"), ("open", "half_open", "open_timeout")]
    opened, half_opened = transitions
    assert (opened.at, opened.open_until) == (Clock.START, Clock.START + 30)
    assert (half_opened.at, half_opened.open_until) == (Clock.START + 30, None)


def test_probe_success_closes_and_starts_a_fresh_window(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(client, key_prefix, clock, transitions=transitions, failure_threshold=2, open_seconds=30)
    service = Service()
    assert [attempt(breaker, service.fail) for _ in range(2)] == ["raised", "raised"]
    clock.advance(30)
    assert attempt(breaker, service.ok) == "ok"
    assert breaker.state == "closed"
    assert summary(transitions)[-1] == ("half_open", "closed", "probe_succeeded")
    assert attempt(breaker, service.fail) == "raised"
    assert breaker.state == "closed"  # one failure in the new window


def test_probe_failure_reopens_for_longer_up_to_the_cap_and_closing_resets_it(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(
        client,
        key_prefix,
        clock,
        transitions=transitions,
        failure_threshold=1,
        open_seconds=10,
        open_backoff_multiplier=2,
        max_open_seconds=35,
    )
    service = Service()
    attempt(breaker, service.fail)
    durations = []
    for _ in range(4):
        opened = transitions[-1]
        assert opened.at == clock.now
        assert opened.open_until is not None
        durations.append(opened.open_until - opened.at)
        clock.advance(durations[-1] - 1)
        assert breaker.state == "open"
        clock.advance(1)
        assert attempt(breaker, service.fail) == "raised"  # the probe fails
        reopened = transitions[-1]
        assert reopened.reason == "probe_failed"
        assert reopened.open_until is not None
        assert refusal(breaker).retry_after == reopened.open_until - clock.now
    assert durations == [10, 20, 35, 35]
    clock.advance(35)
    assert attempt(breaker, service.ok) == "ok"
    attempt(breaker, service.fail)
    opened = transitions[-1]
    assert opened.reason == "failure_threshold"
    assert (opened.at, opened.open_until) == (clock.now, clock.now + 10)


def test_half_open_admits_at_most_max_probes(client: redis.Redis | None, key_prefix: str, clock: Clock) -> None:
    breaker = make_breaker(client, key_prefix, clock, failure_threshold=1, half_open_max_calls=3, open_seconds=30)
    attempt(breaker, Service().fail)
    clock.advance(30)
    permits = [breaker.acquire() for _ in range(3)]
    assert all(permit.is_probe for permit in permits)
    assert len({permit.probe_id for permit in permits}) == 3
    refusal(breaker)
    permits[0].success()
    assert breaker.state == "closed"


def test_ignored_or_interrupted_probe_frees_its_lease(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    breaker = make_breaker(
        client, key_prefix, clock, classify=classify_servicetitan_error, failure_threshold=1, open_seconds=30
    )
    service = Service()
    attempt(breaker, service.fail)
    clock.advance(30)
    assert attempt(breaker, lambda: service.fail(RateLimitExceededError(status=429))) == "raised"
    assert breaker.state == "half_open"
    with pytest.raises(KeyboardInterrupt):
        breaker.call(service.fail, KeyboardInterrupt())
    assert breaker.state == "half_open"
    assert attempt(breaker, service.ok) == "ok"  # the lease was free again
    assert service.calls == 4
    assert breaker.state == "closed"


def test_probe_lease_expiry_admits_a_new_probe(client: redis.Redis | None, key_prefix: str, clock: Clock) -> None:
    breaker = make_breaker(client, key_prefix, clock, failure_threshold=1, open_seconds=30, probe_lease_seconds=20)
    attempt(breaker, Service().fail)
    clock.advance(30)
    abandoned = breaker.acquire()  # its worker never reports back
    assert refusal(breaker).retry_after == 20
    clock.advance(19.5)
    assert refusal(breaker).retry_after == 0.5
    clock.advance(0.5)
    assert attempt(breaker, Service().ok) == "ok"
    assert breaker.state == "closed"
    abandoned.error(ServiceTitanServerError(status=500))  # stale: the breaker has moved on
    assert breaker.state == "closed"


def test_retry_after_is_the_time_until_a_probe_is_admitted(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    breaker = make_breaker(
        client, key_prefix, clock, failure_threshold=1, open_seconds=30, half_open_max_calls=2, probe_lease_seconds=20
    )
    attempt(breaker, Service().fail)
    assert refusal(breaker).retry_after == 30
    clock.advance(10)
    assert refusal(breaker).retry_after == 20
    clock.advance(20)
    breaker.acquire()  # lease until 50
    clock.advance(5)
    breaker.acquire()  # lease until 55
    assert refusal(breaker).retry_after == 15
    clock.advance(15)
    breaker.acquire()  # the first lease expired: lease until 70
    assert refusal(breaker).retry_after == 5


# --- stale outcomes ------------------------------------------------------------------------


def test_outcome_of_a_call_admitted_before_opening_cannot_close_the_half_open_breaker(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    breaker = make_breaker(client, key_prefix, clock, failure_threshold=1, open_seconds=30)
    slow_call = breaker.acquire()  # admitted while closed
    attempt(breaker, Service().fail)
    clock.advance(30)
    probe = breaker.acquire()
    slow_call.success()
    assert breaker.state == "half_open"
    refusal(breaker)  # the probe's lease is still held
    probe.success()
    assert breaker.state == "closed"


def test_outcome_of_a_late_probe_cannot_reopen_the_closed_breaker(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(
        client, key_prefix, clock, transitions=transitions, failure_threshold=1, open_seconds=30, half_open_max_calls=2
    )
    attempt(breaker, Service().fail)
    clock.advance(30)
    first, second = breaker.acquire(), breaker.acquire()
    first.success()
    second.error(ServiceTitanServerError(status=500))
    assert breaker.state == "closed"  # with failure_threshold=1 a counted failure would open it
    old_closed_call = breaker.acquire()
    breaker.force_open(10)
    breaker.reset()
    old_closed_call.error(ServiceTitanServerError(status=500))
    assert breaker.state == "closed"
    assert [t.reason for t in transitions] == [
        "failure_threshold",
        "open_timeout",
        "probe_succeeded",
        "forced_open",
        "reset",
    ]


def test_a_permit_settles_once(client: redis.Redis | None, key_prefix: str, clock: Clock) -> None:
    permit = make_breaker(client, key_prefix, clock).acquire()
    permit.success()
    with pytest.raises(RuntimeError, match="already settled"):
        permit.release()


# --- operator actions and listeners --------------------------------------------------------


def test_force_open_and_reset_fire_listeners(client: redis.Redis | None, key_prefix: str, clock: Clock) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(client, key_prefix, clock, transitions=transitions)
    breaker.force_open(120)
    assert breaker.state == "open"
    assert refusal(breaker).retry_after == 120
    forced = transitions[-1]
    assert (forced.at, forced.open_until) == (Clock.START, Clock.START + 120)
    breaker.force_open(300)  # extends an open breaker: reported too
    breaker.reset()
    assert breaker.state == "closed"
    assert attempt(breaker, Service().ok) == "ok"
    breaker.reset()  # already closed: nothing to report
    assert summary(transitions) == [
        ("closed", "open", "forced_open"),
        ("open", "open", "forced_open"),
        ("open", "closed", "reset"),
    ]
    with pytest.raises(ValueError, match="seconds"):
        breaker.force_open(0)


def test_request_probe_half_opens_an_open_breaker_at_once_and_a_failed_probe_reopens_with_backoff(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(
        client,
        key_prefix,
        clock,
        transitions=transitions,
        failure_threshold=1,
        open_seconds=10,
        open_backoff_multiplier=3,
        half_open_max_calls=2,
    )
    service = Service()
    attempt(breaker, service.fail)
    clock.advance(2)  # 8 s of the open period left
    assert breaker.request_probe() == "half_open"
    [opened, requested] = transitions
    assert (requested.from_state, requested.to_state, requested.reason) == ("open", "half_open", "probe_requested")
    assert (requested.at, requested.open_until) == (clock.now, None)
    assert breaker.state == "half_open"
    first, second = breaker.acquire(), breaker.acquire()  # the usual probe admission: two at a time
    assert (first.is_probe, second.is_probe) == (True, True)
    refusal(breaker)
    first.error(ServiceTitanServerError(status=500))
    reopened = transitions[-1]
    assert (reopened.reason, reopened.at, reopened.open_until) == ("probe_failed", clock.now, clock.now + 30)
    second.success()  # stale: admitted before the re-open
    assert breaker.state == "open"
    assert breaker.request_probe() == "half_open"
    assert attempt(breaker, service.ok) == "ok"
    assert breaker.state == "closed"
    assert summary(transitions)[1:] == [
        ("open", "half_open", "probe_requested"),
        ("half_open", "open", "probe_failed"),
        ("open", "half_open", "probe_requested"),
        ("half_open", "closed", "probe_succeeded"),
    ]
    assert opened.open_until == Clock.START + 10


def test_request_probe_changes_nothing_when_closed_or_half_open(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(client, key_prefix, clock, transitions=transitions, failure_threshold=2, open_seconds=10)
    service = Service()
    attempt(breaker, service.fail)
    assert breaker.request_probe() == "closed"
    attempt(breaker, service.fail)
    assert breaker.state == "open"  # the failure before the request still counted
    clock.advance(10)
    probe = breaker.acquire()
    assert breaker.request_probe() == "half_open"
    assert refusal(breaker).retry_after == 30  # no extra probe: the lease is still held
    probe.success()
    assert summary(transitions) == [
        ("closed", "open", "failure_threshold"),
        ("open", "half_open", "open_timeout"),
        ("half_open", "closed", "probe_succeeded"),
    ]


def test_sixteen_callers_after_request_probe_admit_one_probe_and_see_one_transition(
    client: redis.Redis | None, key_prefix: str, clock: Clock
) -> None:
    """Each caller requests a probe, then calls. On Redis every caller has its own breaker (its own
    connections, as a worker would); per process they share one. The admitted probe holds its
    lease until every other caller was refused."""
    callers = 16
    seen: list[BreakerTransition] = []
    config: dict[str, Any] = {"failure_threshold": 1, "open_seconds": 30, "probe_lease_seconds": 60}
    first = make_breaker(client, key_prefix, clock, transitions=seen, **config)
    attempt(first, Service().fail)
    breakers = [first] + [
        make_breaker(client, key_prefix, clock, transitions=seen, **config) if client is not None else first
        for _ in range(callers - 1)
    ]
    service = Service()
    barrier = threading.Barrier(callers)
    refusals = threading.Semaphore(0)

    def held_probe() -> str:
        for _ in range(callers - 1):
            if not refusals.acquire(timeout=60):
                raise TimeoutError("the other callers were not all refused")
        return service.ok()

    def caller(breaker: CircuitBreaker) -> str:
        barrier.wait(60)
        breaker.request_probe()
        outcome = attempt(breaker, held_probe)
        if outcome == "refused":
            refusals.release()
        return outcome

    with ThreadPoolExecutor(max_workers=callers) as pool:
        outcomes = sorted(pool.map(caller, breakers, timeout=120))
    assert outcomes == ["ok"] + ["refused"] * (callers - 1)
    assert service.calls == 1
    assert summary(seen) == [
        ("closed", "open", "failure_threshold"),
        ("open", "half_open", "probe_requested"),
        ("half_open", "closed", "probe_succeeded"),
    ]
    assert all(breaker.backend == ("redis" if client is not None else "local") for breaker in breakers)


def test_reset_forgets_failures_and_reopen_count(client: redis.Redis | None, key_prefix: str, clock: Clock) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(
        client, key_prefix, clock, transitions=transitions, failure_threshold=2, open_seconds=10, minimum_calls=100
    )
    service = Service()
    attempt(breaker, service.fail)
    breaker.reset()
    attempt(breaker, service.fail)
    assert breaker.state == "closed"  # the first failure was forgotten
    attempt(breaker, service.fail)
    clock.advance(10)
    attempt(breaker, service.fail)  # probe fails: re-opened for 20 s
    breaker.reset()
    attempt(breaker, service.fail)
    attempt(breaker, service.fail)
    opened = transitions[-1]
    assert (opened.reason, opened.open_until) == ("failure_threshold", clock.now + 10)


def test_listener_failures_are_logged_and_never_break_the_call(
    client: redis.Redis | None, key_prefix: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[BreakerTransition] = []

    def broken(transition: BreakerTransition) -> None:
        raise RuntimeError("alerting is down")

    breaker = make_breaker(client, key_prefix, clock, failure_threshold=1, open_seconds=30)
    breaker.add_listener(broken)
    breaker.add_listener(seen.append)
    with caplog.at_level(logging.ERROR, logger=BREAKER_LOGGER):
        with pytest.raises(ServiceTitanServerError):
            breaker.call(Service().fail)
        clock.advance(30)
        assert breaker.call(Service().ok) == "ok"
    assert summary(seen) == [
        ("closed", "open", "failure_threshold"),
        ("open", "half_open", "open_timeout"),
        ("half_open", "closed", "probe_succeeded"),
    ]
    assert all(t.name == "api" for t in seen)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "listener" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in failures)


def test_transition_is_frozen() -> None:
    transition = BreakerTransition("api", BreakerState.CLOSED, BreakerState.OPEN, "forced_open", 1.0, 2.0)
    with pytest.raises(AttributeError):
        transition.reason = "other"  # type: ignore[misc]


# --- Redis specifics -----------------------------------------------------------------------


def test_state_is_shared_and_each_transition_is_reported_by_the_process_that_made_it(
    redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    seen_a: list[BreakerTransition] = []
    seen_b: list[BreakerTransition] = []
    worker_a = make_breaker(redis_client, key_prefix, clock, transitions=seen_a, failure_threshold=2)
    worker_b = make_breaker(redis_client, key_prefix, clock, transitions=seen_b, failure_threshold=2)
    attempt(worker_a, Service().fail)
    attempt(worker_b, Service().fail)  # the second failure, counted with the first
    # worker_a learned "closed" from its own failure's round trip: it may trust that for
    # closed_cache_seconds (the staleness bound, tested on its own below), not longer.
    clock.advance(worker_a.config.closed_cache_seconds)
    refusal(worker_a)
    clock.advance(30)
    assert worker_a.state == "half_open"
    assert worker_b.state == "half_open"
    assert summary(seen_a) == [("open", "half_open", "open_timeout")]
    assert summary(seen_b) == [("closed", "open", "failure_threshold")]
    assert worker_a.backend == worker_b.backend == "redis"


def redis_time(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1_000_000


def test_without_a_clock_the_shared_breaker_runs_on_the_redis_clock(redis_client: redis.Redis, key_prefix: str) -> None:
    transitions: list[BreakerTransition] = []
    breaker = CircuitBreaker(
        "api", redis_client, BreakerConfig(failure_threshold=1), namespace=key_prefix, listeners=[transitions.append]
    )
    before = redis_time(redis_client)
    attempt(breaker, Service().fail)
    after = redis_time(redis_client)
    assert breaker.backend == "redis"
    [opened] = transitions
    assert opened.open_until is not None
    # Redis TIME read by the script, between two readings of it (times are kept to the microsecond).
    assert before - 1e-6 <= opened.at <= after + 1e-6
    assert opened.open_until - opened.at == pytest.approx(30, abs=1e-6)


def test_keys_live_under_the_namespace_with_a_ttl(redis_client: redis.Redis, key_prefix: str, clock: Clock) -> None:
    name = f"keys-{uuid.uuid4().hex[:8]}"
    breaker = make_breaker(redis_client, key_prefix, clock, name=name, failure_threshold=2, key_ttl_seconds=3600)
    expected = {f"{key_prefix}:breaker:{{{name}}}:{part}" for part in ("state", "calls", "failures", "probes")}
    assert set(breaker.redis_keys) == expected

    def check_keys(present: set[str]) -> None:
        found = {key.decode() for key in redis_client.scan_iter(match=f"*{name}*", count=1000)}
        assert found == present
        for key in found:
            assert 0 < redis_client.ttl(key) <= 3600

    attempt(breaker, Service().fail)
    check_keys({k for k in expected if not k.endswith(":probes")})
    attempt(breaker, Service().fail)
    clock.advance(30)
    breaker.acquire()
    check_keys({k for k in expected if k.endswith((":state", ":probes"))})
    state = {k.decode(): v.decode() for k, v in redis_client.hgetall(f"{key_prefix}:breaker:{{{name}}}:state").items()}
    assert set(state) == {
        "state",
        "gen",
        "open_until",
        "reopens",
        "since",
        "seq",
        "last_call",
        "last_failure",
        "ttl_at",
    }
    assert state["state"] == "half_open"

    breaker.force_open(7200)  # open longer than the TTL: the state must outlive the open period
    assert redis_client.ttl(f"{key_prefix}:breaker:{{{name}}}:state") > 7200
