"""RetryPolicy: every rule, with an injected clock, sleep and random source (no real sleeping)."""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.errors import (
    BadRequestError,
    CircuitBreakerOpenError,
    CredentialValidationError,
    InvalidCredentialsError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitExceededError,
    RetryExhaustedError,
    ServiceTitanConnectionError,
    ServiceTitanError,
    ServiceTitanServerError,
    ServiceTitanTimeoutError,
)
from airflow_provider_servicetitan.resilience.retry import RetryEvent, RetryPolicy
from airflow_provider_servicetitan.sandbox import SandboxServer
from tests.helpers import credentials_for

LOGGER = "airflow_provider_servicetitan.resilience.retry"


class FakeTime:
    """A clock that only moves when something sleeps (or a test advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class MaxRng(random.Random):
    """Jitter stub: always the top of the range, and remembers the ranges asked for."""

    def __init__(self) -> None:
        super().__init__(0)
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return b


class MinRng(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


class Script:
    """A callable that raises the scripted errors in turn, then returns ``result``."""

    def __init__(
        self, *errors: BaseException, result: object = "ok", takes: float = 0.0, time: FakeTime | None = None
    ) -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0
        self.takes = takes
        self.time = time

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.time is not None:
            self.time.now += self.takes
        if self.errors:
            raise self.errors.pop(0)
        return self.result


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def policy(fake: FakeTime, rng: random.Random | None = None, **kwargs: object) -> RetryPolicy:
    return RetryPolicy(sleep=fake.sleep, clock=fake.clock, rng=rng or MaxRng(), **kwargs)  # type: ignore[arg-type]


def server_error(n: int = 0) -> ServiceTitanServerError:
    return ServiceTitanServerError(status=503, trace_id=f"trace-{n}")


# -- attempts -----------------------------------------------------------------------------------


def test_succeeds_on_the_third_attempt(fake: FakeTime) -> None:
    fn = Script(server_error(1), server_error(2), result={"data": [1]})

    assert policy(fake, max_attempts=3).call(fn) == {"data": [1]}
    assert fn.calls == 3
    assert len(fake.sleeps) == 2


def test_passes_arguments_through(fake: FakeTime) -> None:
    def add(a: int, *, fn: int) -> int:  # a keyword called "fn" must not clash with call()'s own
        return a + fn

    assert policy(fake).call(add, 1, fn=2) == 3


def test_exhausted_after_max_attempts_chains_the_last_error(fake: FakeTime) -> None:
    errors = [server_error(1), ServiceTitanTimeoutError("timed out"), ServiceTitanConnectionError("reset")]
    fn = Script(*errors)

    with pytest.raises(RetryExhaustedError) as caught:
        policy(fake, max_attempts=3).call(fn)

    assert caught.value.attempts == 3
    assert caught.value.__cause__ is errors[-1]
    assert caught.value.last_error is errors[-1]
    assert fn.calls == 3
    assert len(fake.sleeps) == 2  # no sleep after the last attempt


def test_one_attempt_means_no_retry(fake: FakeTime) -> None:
    error = server_error()
    with pytest.raises(RetryExhaustedError) as caught:
        policy(fake, max_attempts=1).call(Script(error))
    assert caught.value.attempts == 1
    assert caught.value.__cause__ is error
    assert fake.sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        InvalidCredentialsError(status=401, title="invalid_client"),
        CredentialValidationError("client_id", "a non-empty string"),
        BadRequestError(status=400),
        PermissionDeniedError(status=403),
        NotFoundError(status=404),
        ServiceTitanError("not retryable by default"),
        ValueError("bad value"),
        TypeError("bad type"),
        KeyError("bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_non_retryable_error_is_raised_unwrapped_after_one_attempt(fake: FakeTime, error: Exception) -> None:
    fn = Script(error, server_error())

    with pytest.raises(type(error)) as caught:
        policy(fake, max_attempts=5).call(fn)

    assert caught.value is error
    assert fn.calls == 1
    assert fake.sleeps == []


def test_non_retryable_after_retryable_stops_at_once(fake: FakeTime) -> None:
    error = NotFoundError(status=404)
    fn = Script(server_error(), error, server_error())

    with pytest.raises(NotFoundError) as caught:
        policy(fake, max_attempts=5).call(fn)

    assert caught.value is error
    assert fn.calls == 2


def test_custom_retry_on(fake: FakeTime) -> None:
    fn = Script(KeyError("flaky"), result=42)
    assert policy(fake, retry_on=lambda e: isinstance(e, KeyError)).call(fn) == 42
    assert fn.calls == 2


# -- backoff ------------------------------------------------------------------------------------


def test_full_jitter_ceiling_doubles_and_is_capped(fake: FakeTime) -> None:
    rng = MaxRng()
    fn = Script(*(server_error(i) for i in range(7)))

    with pytest.raises(RetryExhaustedError):
        policy(fake, rng=rng, max_attempts=7, base_delay=1.0, max_delay=5.0).call(fn)

    # delay before attempt n+1 = uniform(0, min(max_delay, base * 2**(n-1)))
    assert rng.ranges == [(0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 5.0), (0.0, 5.0), (0.0, 5.0)]
    assert fake.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_jitter_stays_within_its_ceiling(fake: FakeTime) -> None:
    fn = Script(*(server_error(i) for i in range(10)))

    with pytest.raises(RetryExhaustedError):
        policy(fake, rng=random.Random(7), max_attempts=10, base_delay=0.5, max_delay=8.0).call(fn)

    ceilings = [min(8.0, 0.5 * 2 ** (n - 1)) for n in range(1, 10)]
    assert len(fake.sleeps) == 9
    assert all(0 <= s <= c for s, c in zip(fake.sleeps, ceilings, strict=True))
    assert len(set(fake.sleeps)) == 9  # really jittered, not a fixed schedule


def test_many_attempts_do_not_overflow(fake: FakeTime) -> None:
    fn = Script(*(server_error(i) for i in range(1999)))
    assert policy(fake, max_attempts=2000, base_delay=1.0, max_delay=2.0).call(fn) == "ok"
    assert max(fake.sleeps) == 2.0


# -- Retry-After --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [RateLimitExceededError(status=429, retry_after=7.5), CircuitBreakerOpenError("servicetitan:crm", 7.5)],
    ids=lambda e: type(e).__name__,
)
def test_retry_after_is_a_minimum(fake: FakeTime, error: ServiceTitanError) -> None:
    fn = Script(error)

    assert policy(fake, rng=MinRng(), base_delay=1.0, max_delay=60.0).call(fn) == "ok"

    assert fake.sleeps == [7.5]  # the jitter drew 0, the server asked for 7.5


def test_jitter_longer_than_retry_after_wins_for_an_open_breaker(fake: FakeTime) -> None:
    fn = Script(CircuitBreakerOpenError("crm", 0.5))
    assert policy(fake, rng=MaxRng(), base_delay=4.0).call(fn) == "ok"
    assert fake.sleeps == [4.0]


def test_a_429_waits_its_retry_after_plus_at_most_ten_percent(fake: FakeTime) -> None:
    rng = MaxRng()
    fn = Script(RateLimitExceededError(status=429, retry_after=0.5))

    # the backoff (4 s) does not apply: the server said when to come back
    assert policy(fake, rng=rng, base_delay=4.0).call(fn) == "ok"

    assert rng.ranges == [(0.0, 0.1)]
    assert fake.sleeps == [pytest.approx(0.55)]


def test_rate_limit_without_retry_after_uses_backoff(fake: FakeTime) -> None:
    fn = Script(RateLimitExceededError(status=429), RateLimitExceededError(status=429))
    assert policy(fake, rng=MaxRng(), base_delay=3.0).call(fn) == "ok"
    assert fake.sleeps == [3.0, 6.0]


def test_retry_after_beyond_the_rate_limit_budget_gives_up_at_once(fake: FakeTime) -> None:
    error = RateLimitExceededError(status=429, retry_after=121)
    fn = Script(error)

    with pytest.raises(RetryExhaustedError) as caught:
        policy(fake, rng=MinRng(), max_attempts=5, max_delay=60.0, rate_limit_budget=120.0).call(fn)

    assert caught.value.attempts == 1
    assert caught.value.__cause__ is error
    assert fake.sleeps == []
    assert fn.calls == 1


def test_retry_after_beyond_max_delay_is_honoured_within_the_rate_limit_budget(fake: FakeTime) -> None:
    fn = Script(RateLimitExceededError(status=429, retry_after=90))
    assert RetryPolicy().rate_limit_budget == 120.0
    assert policy(fake, rng=MinRng(), max_delay=60.0).call(fn) == "ok"
    assert fake.sleeps == [90.0]


def test_retry_after_beyond_max_delay_is_honoured_within_max_elapsed(fake: FakeTime) -> None:
    fn = Script(RateLimitExceededError(status=429, retry_after=200))
    # max_elapsed, when set, is the budget of rate-limited retries (rate_limit_budget is not)
    assert policy(fake, rng=MinRng(), max_delay=60.0, max_elapsed=300.0, rate_limit_budget=10.0).call(fn) == "ok"
    assert fake.sleeps == [200.0]


# -- 429: not a failure, bounded by time only ---------------------------------------------------


def test_429s_do_not_consume_attempts(fake: FakeTime) -> None:
    events: list[RetryEvent] = []
    limited = [RateLimitExceededError(status=429, retry_after=1.0) for _ in range(10)]
    fn = Script(server_error(1), *limited, server_error(2), result="done")

    # 2 failures in 3 attempts: the 10 rate-limited attempts between them are not counted
    assert policy(fake, rng=MinRng(), max_attempts=3, listener=events.append).call(fn) == "done"

    assert fn.calls == 13
    assert [e.rate_limited for e in events] == [False] + [True] * 10 + [False]
    assert fake.sleeps[1:11] == [1.0] * 10


def test_failures_still_end_the_retries_between_429s(fake: FakeTime) -> None:
    limited = RateLimitExceededError(status=429, retry_after=1.0)
    fn = Script(server_error(1), limited, server_error(2), limited, server_error(3), result="never")

    with pytest.raises(RetryExhaustedError) as caught:
        policy(fake, rng=MinRng(), max_attempts=3).call(fn)

    assert caught.value.attempts == 5
    assert isinstance(caught.value.last_error, ServiceTitanServerError)


def test_endless_429s_end_with_the_rate_limit_budget(fake: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    start = fake.now
    fn = Script(*(RateLimitExceededError(status=429, retry_after=1.0) for _ in range(1000)))

    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(RetryExhaustedError) as caught:
        policy(fake, rng=MaxRng(), max_attempts=2, rate_limit_budget=30.0).call(fn)

    # each wait is 1.1 s: 27 of them fit in 30 s, the 28th would end at 30.8 s
    assert len(fake.sleeps) == 27
    assert caught.value.attempts == 28
    assert isinstance(caught.value.last_error, RateLimitExceededError)
    assert fake.now - start <= 30.0
    assert "giving up after 28 attempts" in caplog.text


def test_endless_429s_end_with_max_elapsed_when_set(fake: FakeTime) -> None:
    fn = Script(*(RateLimitExceededError(status=429, retry_after=2.0) for _ in range(1000)), takes=1.0, time=fake)

    with pytest.raises(RetryExhaustedError) as caught:
        policy(fake, rng=MinRng(), max_attempts=1, max_elapsed=10.0, rate_limit_budget=1000.0).call(fn)

    # attempts end at t=1, 4, 7, 10: after the fourth no time is left
    assert caught.value.attempts == 4
    assert fake.sleeps == [2.0, 2.0, 2.0]


def test_a_rate_limited_retry_is_logged_at_info_not_as_a_failure(
    fake: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    fn = Script(RateLimitExceededError(status=429, retry_after=1.0, trace_id="t-429"))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        policy(fake, rng=MinRng()).call(fn)

    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.INFO
    assert "rate limited" in record.getMessage()
    assert "t-429" in record.getMessage()


def test_open_breaker_beyond_the_budget_ends_the_retries(fake: FakeTime) -> None:
    error = CircuitBreakerOpenError("servicetitan:crm", retry_after=45.0)
    fn = Script(error)

    with pytest.raises(RetryExhaustedError) as caught:
        policy(fake, max_attempts=5, max_elapsed=30.0).call(fn)

    assert caught.value.attempts == 1
    assert caught.value.__cause__ is error
    assert fake.sleeps == []


def test_open_breaker_within_the_budget_waits_for_the_probe(fake: FakeTime) -> None:
    fn = Script(CircuitBreakerOpenError("servicetitan:crm", retry_after=5.0))
    assert policy(fake, rng=MinRng(), max_attempts=5, max_elapsed=30.0).call(fn) == "ok"
    assert fake.sleeps == [5.0]


def test_retry_after_counts_against_the_remaining_time(fake: FakeTime) -> None:
    # Each attempt takes 20 s: after the first, 40 of the 60 s are left, so a 45 s Retry-After is too long.
    error = RateLimitExceededError(status=429, retry_after=45)
    fn = Script(error, takes=20.0, time=fake)

    with pytest.raises(RetryExhaustedError) as caught:
        policy(fake, max_elapsed=60.0).call(fn)

    assert caught.value.attempts == 1
    assert fake.sleeps == []


def test_retry_after_date_from_a_server_10_minutes_ahead_is_waited_as_sent(
    fake: FakeTime,
    start_sandbox: Callable[..., SandboxServer],
    make_client: Callable[..., ServiceTitanClient],
) -> None:
    # The sandbox's clock runs 10 min ahead of this worker's; its 429 says "come back at my now + 30 s"
    # as an HTTP date, and its Date header says what its now is.
    sandbox = start_sandbox()
    sandbox.admin.advance_clock(600)
    sandbox.admin.set_faults(burst_429=1, burst_429_retry_after=30, retry_after_format="http-date")
    events: list[RetryEvent] = []
    retry_policy = policy(fake, rng=MinRng(), max_attempts=2, base_delay=0.01, listener=events.append)
    client = make_client(credentials_for(sandbox), retry_policy=retry_policy)

    body = client.request("GET", get_resource("customers").list_path(client.tenant_id), params={"pageSize": 1})

    assert len(body["data"]) == 1
    assert [(e.error_class, e.delay) for e in events] == [("RateLimitExceededError", 30.0)]
    assert fake.sleeps == [30.0]


# -- max_elapsed --------------------------------------------------------------------------------


def test_gives_up_instead_of_sleeping_past_max_elapsed(fake: FakeTime) -> None:
    start = fake.now
    fn = Script(*(server_error(i) for i in range(10)))

    with pytest.raises(RetryExhaustedError) as caught:
        policy(fake, rng=MaxRng(), max_attempts=10, base_delay=3.0, max_delay=60.0, max_elapsed=10.0).call(fn)

    # slept 3 (t=3), then 6 (t=9); the next wait (12 s) would end past 10 s: give up without it.
    assert fake.sleeps == [3.0, 6.0]
    assert caught.value.attempts == 3
    assert fake.now - start <= 10.0


def test_gives_up_when_the_attempts_used_up_the_time(fake: FakeTime) -> None:
    fn = Script(*(server_error(i) for i in range(10)), takes=4.0, time=fake)

    with pytest.raises(RetryExhaustedError) as caught:
        policy(fake, rng=MinRng(), max_attempts=10, base_delay=1.0, max_elapsed=10.0).call(fn)

    # attempts end at t=4, 8, 12: after the third, no time is left
    assert caught.value.attempts == 3
    assert fn.calls == 3


# -- max_retry_after: a wait better deferred than slept -----------------------------------------


@pytest.mark.parametrize(
    "error",
    [RateLimitExceededError(status=429, retry_after=120.0), CircuitBreakerOpenError("servicetitan:crm", 120.0)],
    ids=["429", "open-breaker"],
)
def test_a_requested_wait_longer_than_max_retry_after_gives_up_at_once(
    fake: FakeTime, error: ServiceTitanError, caplog: pytest.LogCaptureFixture
) -> None:
    fn = Script(error)
    # The budget alone would wait the 120 s: max_retry_after is what refuses it.
    retry = policy(fake, max_attempts=5, max_delay=60.0, max_elapsed=600.0, max_retry_after=30.0)

    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(RetryExhaustedError) as caught:
        retry.call(fn)

    assert caught.value.attempts == 1
    assert caught.value.__cause__ is caught.value.last_error is error
    assert getattr(caught.value.last_error, "retry_after", None) == 120.0  # what the caller defers by
    assert (fn.calls, fake.sleeps) == (1, [])
    [given_up] = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert "asked to wait 120.00s, more than max_retry_after=30s" in given_up


def test_a_requested_wait_up_to_max_retry_after_is_slept(fake: FakeTime) -> None:
    fn = Script(RateLimitExceededError(status=429, retry_after=30.0), CircuitBreakerOpenError("crm", 0.0))
    retry = policy(fake, rng=MinRng(), max_attempts=3, max_delay=60.0, max_retry_after=30.0)
    assert retry.call(fn) == "ok"
    assert fake.sleeps == [30.0, 0.0]


def test_max_retry_after_limits_requested_waits_only_not_the_backoff(fake: FakeTime) -> None:
    fn = Script(server_error(1), server_error(2), RateLimitExceededError(status=429, retry_after=5.0))
    retry = policy(fake, rng=MaxRng(), max_attempts=4, base_delay=4.0, max_delay=60.0, max_retry_after=0.0)

    with pytest.raises(RetryExhaustedError) as caught:
        retry.call(fn)

    assert fake.sleeps == [4.0, 8.0]  # backoff sleeps longer than max_retry_after are fine
    assert caught.value.attempts == 3
    assert isinstance(caught.value.last_error, RateLimitExceededError)


def test_the_budget_still_applies_under_a_larger_max_retry_after(
    fake: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    fn = Script(CircuitBreakerOpenError("crm", 45.0))
    retry = policy(fake, max_attempts=5, max_elapsed=30.0, max_retry_after=100.0)

    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(RetryExhaustedError):
        retry.call(fn)

    assert fake.sleeps == []
    assert "more than the 30.00s left" in caplog.text


def test_max_retry_after_none_keeps_waiting_within_the_budget(fake: FakeTime) -> None:
    fn = Script(RateLimitExceededError(status=429, retry_after=120.0))
    assert policy(fake, max_delay=60.0, max_elapsed=300.0).max_retry_after is None
    assert policy(fake, rng=MinRng(), max_delay=60.0, max_elapsed=300.0).call(fn) == "ok"
    assert fake.sleeps == [120.0]


def test_max_retry_after_through_presets_and_overrides(fake: FakeTime) -> None:
    retry = RetryPolicy.aggressive(max_retry_after=10.0, sleep=fake.sleep, clock=fake.clock)
    assert retry.max_retry_after == 10.0
    assert retry.with_overrides(max_retry_after=None).max_retry_after is None
    with pytest.raises(RetryExhaustedError):
        retry.call(Script(RateLimitExceededError(status=429, retry_after=11.0)))
    assert fake.sleeps == []


# -- log and listener ---------------------------------------------------------------------------


def test_each_retry_is_logged_and_reported(fake: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    error = ServiceTitanServerError(status=503, trace_id="0HM-trace-abc", detail="token s3cr3t-detail")
    events: list[RetryEvent] = []

    def fetch_page(**kwargs: object) -> str:
        if not events:
            raise error
        return "ok"

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = policy(fake, rng=MaxRng(), base_delay=1.5, listener=events.append).call(
            fetch_page, client_secret="s3cr3t-argument"
        )

    assert result == "ok"
    assert events == [
        RetryEvent(attempt=1, delay=1.5, error=error, error_class="ServiceTitanServerError", trace_id="0HM-trace-abc")
    ]
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    for expected in ("fetch_page", "attempt 1 of 5", "1.50s", "ServiceTitanServerError", "0HM-trace-abc"):
        assert expected in message
    assert record.retry_attempt == 1  # type: ignore[attr-defined]
    assert record.retry_delay == 1.5  # type: ignore[attr-defined]
    assert record.retry_error_class == "ServiceTitanServerError"  # type: ignore[attr-defined]
    assert record.retry_trace_id == "0HM-trace-abc"  # type: ignore[attr-defined]
    # neither the arguments nor the error's text are logged
    assert "s3cr3t" not in caplog.text


def test_events_for_every_retry(fake: FakeTime) -> None:
    events: list[RetryEvent] = []
    errors = [server_error(1), RateLimitExceededError(status=429, retry_after=9.0), ServiceTitanTimeoutError("t")]
    fn = Script(*errors)

    policy(fake, rng=MaxRng(), max_attempts=4, base_delay=1.0, listener=events.append).call(fn)

    # the 429 is not a failure: the timeout is the second failure, backoff ceiling 2 s
    assert [(e.attempt, e.delay, e.error_class, e.trace_id, e.rate_limited) for e in events] == [
        (1, 1.0, "ServiceTitanServerError", "trace-1", False),
        (2, pytest.approx(9.9), "RateLimitExceededError", None, True),
        (3, 2.0, "ServiceTitanTimeoutError", None, False),
    ]
    assert [e.error for e in events] == errors
    assert [e.delay for e in events] == fake.sleeps


def test_giving_up_is_logged_with_the_reason(fake: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(RetryExhaustedError):
        policy(fake, max_elapsed=30.0).call(Script(CircuitBreakerOpenError("crm", 45.0)))

    assert "giving up after 1 attempt" in caplog.text
    assert "CircuitBreakerOpenError" in caplog.text
    assert "45.00s" in caplog.text


def test_a_failing_listener_does_not_break_the_call(fake: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: RetryEvent) -> None:
        raise RuntimeError("metrics backend down")

    fn = Script(server_error())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert policy(fake, listener=broken).call(fn) == "ok"

    assert fn.calls == 2
    assert "retry listener" in caplog.text


# -- presets, overrides, validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (RetryPolicy.default, (5, 0.25, 60.0)),
        (RetryPolicy.aggressive, (5, 2.0, 60.0)),
        (RetryPolicy.conservative, (2, 5.0, 60.0)),
    ],
)
def test_presets(factory: Callable[..., RetryPolicy], expected: tuple[int, float, float]) -> None:
    p = factory()
    assert (p.max_attempts, p.base_delay, p.max_delay) == expected
    assert p.max_elapsed is None
    assert RetryPolicy.preset(factory.__name__) == p


def test_default_preset_equals_the_constructor_defaults() -> None:
    assert RetryPolicy.default() == RetryPolicy()


def test_preset_accepts_overrides_and_loose_spelling(fake: FakeTime) -> None:
    p = RetryPolicy.preset(" Aggressive ", max_delay=10.0, sleep=fake.sleep)
    assert (p.max_attempts, p.base_delay, p.max_delay) == (5, 2.0, 10.0)
    assert p.sleep == fake.sleep
    assert RetryPolicy.conservative(max_elapsed=120.0).max_elapsed == 120.0


def test_unknown_preset_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown retry preset 'reckless'") as caught:
        RetryPolicy.preset("reckless")
    for name in ("default", "aggressive", "conservative"):
        assert name in str(caught.value)


def test_preset_overrides_are_validated() -> None:
    with pytest.raises(ValueError, match="base_delay"):
        RetryPolicy.conservative(max_delay=1.0)


def test_with_overrides_copies_and_keeps_the_injectables(fake: FakeTime) -> None:
    original = policy(fake, max_attempts=3)
    changed = original.with_overrides(max_attempts=2)

    assert (original.max_attempts, changed.max_attempts) == (3, 2)
    with pytest.raises(RetryExhaustedError) as caught:
        changed.call(Script(server_error(), server_error()))
    assert caught.value.attempts == 2
    assert len(fake.sleeps) == 1  # the fake sleep travelled with the copy
    with pytest.raises(ValueError, match="max_attempts"):
        original.with_overrides(max_attempts=0)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"base_delay": -1.0}, "base_delay"),
        ({"max_delay": -1.0}, "max_delay"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"base_delay": math.nan}, "base_delay"),
        ({"base_delay": 10.0, "max_delay": 5.0}, "base_delay.*max_delay"),
        ({"max_elapsed": 0}, "max_elapsed"),
        ({"max_elapsed": -5.0}, "max_elapsed"),
        ({"max_retry_after": -1.0}, "max_retry_after"),
        ({"max_retry_after": math.inf}, "max_retry_after"),
        ({"max_retry_after": math.nan}, "max_retry_after"),
        ({"max_retry_after": "30"}, "max_retry_after"),
        ({"max_retry_after": True}, "max_retry_after"),
        ({"retry_on": "yes"}, "retry_on"),
        ({"rate_limit_budget": 0}, "rate_limit_budget"),
        ({"rate_limit_budget": math.inf}, "rate_limit_budget"),
        ({"rate_limited": None}, "rate_limited"),
        ({"sleep": None}, "sleep"),
        ({"listener": 3}, "listener"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_zero_delays_are_allowed(fake: FakeTime) -> None:
    assert policy(fake, base_delay=0.0, max_delay=0.0).call(Script(server_error())) == "ok"
    assert fake.sleeps == [0.0]


# -- properties ---------------------------------------------------------------------------------

OK, RETRYABLE, FATAL = "ok", "retryable", "fatal"

outcome = st.one_of(
    st.sampled_from([OK, RETRYABLE, FATAL]),
    st.floats(min_value=0.0, max_value=100.0),  # a 429 with this Retry-After
)


def make_error(item: object) -> BaseException:
    if item == RETRYABLE:
        return ServiceTitanServerError(status=500)
    if item == FATAL:
        return BadRequestError(status=400)
    assert isinstance(item, float)
    return RateLimitExceededError(status=429, retry_after=item)


class Scripted:
    """Plays a list of outcomes; "ok" (or running out of script) returns the attempt number."""

    def __init__(self, items: list[object]) -> None:
        self.items = items
        self.raised: list[BaseException] = []

    def __call__(self) -> int:
        n = len(self.raised) + 1
        item = self.items[n - 1] if n <= len(self.items) else OK
        if item == OK:
            return n
        self.raised.append(make_error(item))
        raise self.raised[-1]


def outcome_of(p: RetryPolicy, fn: Callable[[], int]) -> tuple[str, object]:
    try:
        return "result", p.call(fn)
    except RetryExhaustedError as exc:
        return "exhausted", exc
    except BadRequestError as exc:
        return "raised", exc


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(outcome, max_size=8),
    max_attempts=st.integers(min_value=1, max_value=6),
    base_delay=st.floats(min_value=0.0, max_value=10.0),
    extra_delay=st.floats(min_value=0.0, max_value=50.0),
    rng=st.randoms(use_true_random=False),
)
def test_property_calls_and_sleeps(items, max_attempts, base_delay, extra_delay, rng) -> None:
    fake = FakeTime()
    max_delay = base_delay + extra_delay
    fn = Scripted(items)
    # a rate-limit budget no script can use up: 429s (at most 8 x 110 s) never end the call here
    p = policy(
        fake, rng=rng, max_attempts=max_attempts, base_delay=base_delay, max_delay=max_delay, rate_limit_budget=1e4
    )

    # the model: walk the outcomes until one ends the call; a 429 is not a failed attempt
    expected_calls, expected_end, failures = 0, None, 0
    while expected_end is None:
        n = expected_calls = expected_calls + 1
        item = items[n - 1] if n <= len(items) else OK
        if item == OK:
            expected_end = "result"
        elif item == FATAL:
            expected_end = "raised"
        elif item == RETRYABLE:
            failures += 1
            if failures == max_attempts:
                expected_end = "exhausted"

    end, value = outcome_of(p, fn)

    assert end == expected_end
    if end == "result":
        assert value == expected_calls
    elif end == "exhausted":
        assert isinstance(value, RetryExhaustedError)
        assert value.attempts == expected_calls
        assert value.__cause__ is fn.raised[-1]
    else:
        assert value is fn.raised[-1]  # the original error, unwrapped
    assert len(fn.raised) + (end == "result") == expected_calls
    assert len(fake.sleeps) == expected_calls - 1
    for error, slept in zip(fn.raised, fake.sleeps, strict=False):
        retry_after = getattr(error, "retry_after", None)
        if retry_after is None:
            assert 0.0 <= slept <= max_delay
        else:
            assert retry_after <= slept <= retry_after * 1.1 + 1e-9


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(outcome, max_size=8),
    max_attempts=st.integers(min_value=1, max_value=8),
    base_delay=st.floats(min_value=0.0, max_value=10.0),
    max_delay=st.floats(min_value=10.0, max_value=30.0),
    max_elapsed=st.floats(min_value=0.5, max_value=200.0),
    takes=st.floats(min_value=0.0, max_value=20.0),
    rng=st.randoms(use_true_random=False),
)
def test_property_never_sleeps_past_max_elapsed(
    items, max_attempts, base_delay, max_delay, max_elapsed, takes, rng
) -> None:
    fake = FakeTime()
    fn = Scripted(items)

    def timed() -> int:
        fake.now += takes
        return fn()

    p = policy(
        fake, rng=rng, max_attempts=max_attempts, base_delay=base_delay, max_delay=max_delay, max_elapsed=max_elapsed
    )
    with contextlib.suppress(RetryExhaustedError, BadRequestError):
        p.call(timed)

    calls = len(fake.sleeps) + 1
    rate_limited = sum(1 for error in fn.raised[: calls - 1] if isinstance(error, RateLimitExceededError))
    assert calls - rate_limited <= max_attempts  # 429s are not counted as attempts
    # a sleep only ever starts if it ends within the budget
    assert sum(fake.sleeps) + takes * (calls - 1) <= max_elapsed + 1e-9
    for error, slept in zip(fn.raised, fake.sleeps, strict=False):
        retry_after = getattr(error, "retry_after", None)
        assert slept >= 0.0
        if retry_after is None:
            assert slept <= max_delay
        else:  # only a server may ask for more than max_delay
            assert retry_after <= slept <= max(max_delay, retry_after * 1.1 + 1e-9)
