"""The breaker against a reference model: random calls, outcomes, held calls and clock jumps.

:class:`ReferenceBreaker` is the specification written out plainly, independently of the package
(it is not the package's fallback class). After every step the real breaker must be in the same
state, have admitted or refused the same calls with exactly the same ``retry_after``, and reported
the same transitions at exactly the same times.

Model time is the breaker's injected clock, which moves only by the machine's ``advance`` steps:
no real time passes for the breaker, so every comparison is exact. Steps are halves of ``UNIT``
and every configured duration is a multiple of ``UNIT``, so examples often land exactly on a
window, open-period or lease boundary, where the breaker and the model must agree.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import redis
import requests
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.errors import (
    CircuitBreakerOpenError,
    InvalidCredentialsError,
    NotFoundError,
    RateLimitExceededError,
    ServiceTitanServerError,
)
from airflow_provider_servicetitan.resilience.breaker import (
    STATE_FIELDS,
    BreakerConfig,
    BreakerPermit,
    BreakerTransition,
    CircuitBreaker,
    seconds_until_admission,
)

from .test_breaker import Clock

UNIT = 10.0

# outcome name -> (error raised by the call or None for a success, how the spec counts it)
OUTCOMES: dict[str, tuple[Callable[[], Exception] | None, str]] = {
    "success": (None, "success"),
    "server_error": (lambda: ServiceTitanServerError(status=500), "failure"),
    "timeout": (requests.Timeout, "failure"),
    "rate_limited": (lambda: RateLimitExceededError(status=429), "ignored"),
    "not_found": (lambda: NotFoundError(status=404), "success"),
    "bad_credentials": (lambda: InvalidCredentialsError(status=401), "success"),
}
# Failures are drawn more often than the rest so that examples get past the closed state.
OUTCOME_NAMES = st.sampled_from(["server_error", "server_error", "timeout", *OUTCOMES])


@dataclass(frozen=True)
class ModelPermit:
    generation: int
    probe: int | None


@dataclass
class ReferenceBreaker:
    """The breaker's rules, one step at a time, in a single process."""

    failure_threshold: int
    window: float
    rate: float
    minimum_calls: int
    open_seconds: float
    max_open_seconds: float
    multiplier: float
    max_probes: int
    lease: float
    state: str = "closed"
    generation: int = 0
    reopens: int = 0
    open_until: float = 0.0
    outcomes: list[tuple[float, bool]] = field(default_factory=list)  # (time, failed), closed only
    leases: dict[int, float] = field(default_factory=dict)  # probe -> lease expiry
    probes_issued: int = 0
    # (from, to, reason, at, open_until)
    transitions: list[tuple[str, str, str, float, float | None]] = field(default_factory=list)

    def _go(self, to: str, reason: str, now: float) -> None:
        self.transitions.append((self.state, to, reason, now, self.open_until if to == "open" else None))
        self.state = to
        self.generation += 1
        self.outcomes = []
        self.leases = {}

    def _open(self, now: float, seconds: float, reason: str) -> None:
        self.open_until = now + seconds
        self._go("open", reason, now)

    def _tick(self, now: float) -> None:
        if self.state == "open" and now >= self.open_until:
            self._go("half_open", "open_timeout", now)
        self.leases = {probe: until for probe, until in self.leases.items() if until > now}

    def peek(self, now: float) -> str:
        self._tick(now)
        return self.state

    def admit(self, now: float) -> ModelPermit | float:
        """A permit, or the ``retry_after`` of the refusal."""
        self._tick(now)
        if self.state == "closed":
            return ModelPermit(self.generation, None)
        if self.state == "open":
            return self.open_until - now
        if len(self.leases) < self.max_probes:
            self.probes_issued += 1
            self.leases[self.probes_issued] = now + self.lease
            return ModelPermit(self.generation, self.probes_issued)
        return min(self.leases.values()) - now

    def settle(self, permit: ModelPermit, kind: str, now: float) -> None:
        self._tick(now)
        if permit.generation != self.generation or kind == "ignored":
            if permit.probe is not None:
                self.leases.pop(permit.probe, None)
            return
        if self.state == "half_open":
            if kind == "success":
                self.reopens = 0
                self._go("closed", "probe_succeeded", now)
            else:
                self.reopens += 1
                backoff = self.open_seconds * self.multiplier**self.reopens
                self._open(now, min(self.max_open_seconds, backoff), "probe_failed")
            return
        self.outcomes = [(at, failed) for at, failed in self.outcomes if at > now - self.window]
        self.outcomes.append((now, kind == "failure"))
        failures = sum(failed for _, failed in self.outcomes)
        if failures >= self.failure_threshold:
            self._open(now, self.open_seconds, "failure_threshold")
        elif len(self.outcomes) >= self.minimum_calls and failures / len(self.outcomes) >= self.rate:
            self._open(now, self.open_seconds, "failure_rate")

    def force_open(self, now: float, seconds: float) -> None:
        self._tick(now)
        self._open(now, seconds, "forced_open")

    def reset(self, now: float) -> None:
        self._tick(now)
        self.reopens = 0
        if self.state == "closed":
            self.outcomes = []
        else:
            self._go("closed", "reset", now)

    def request_probe(self, now: float) -> None:
        self._tick(now)
        if self.state == "open":
            self._go("half_open", "probe_requested", now)


class BreakerMachine(RuleBasedStateMachine):
    """Drives one breaker and the reference model with the same steps."""

    client: ClassVar[redis.Redis | None] = None
    namespace: ClassVar[str] = ""

    held = Bundle("held")

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.operator_actions = 0
        self.seen: list[BreakerTransition] = []
        self.breaker: CircuitBreaker
        self.model: ReferenceBreaker

    @initialize(
        failure_threshold=st.integers(1, 3),
        minimum_calls=st.integers(1, 6),
        rate=st.sampled_from([0.25, 0.5, 1.0]),
        multiplier=st.sampled_from([1.0, 2.0, 3.0]),
        max_probes=st.integers(1, 3),
        operator_actions=st.integers(0, 3),
        # How long a closed state learned from Redis is trusted and how many successes are buffered:
        # in one process neither may change a single decision (nothing else changes the state).
        closed_cache_seconds=st.sampled_from([0.0, 1.0, 4 * UNIT, 1000 * UNIT]),
        success_batch_size=st.sampled_from([1, 3, 100]),
    )
    def build(
        self,
        failure_threshold: int,
        minimum_calls: int,
        rate: float,
        multiplier: float,
        max_probes: int,
        operator_actions: int,
        closed_cache_seconds: float,
        success_batch_size: int,
    ) -> None:
        # Operators act rarely; unlimited, force_open would keep most examples open.
        self.operator_actions = operator_actions
        config = BreakerConfig(
            failure_threshold=failure_threshold,
            window_seconds=6 * UNIT,
            failure_rate_threshold=rate,
            minimum_calls=minimum_calls,
            open_seconds=3 * UNIT,
            max_open_seconds=12 * UNIT,
            open_backoff_multiplier=multiplier,
            half_open_max_calls=max_probes,
            probe_lease_seconds=2 * UNIT,
            closed_cache_seconds=closed_cache_seconds,
            success_batch_size=success_batch_size,
        )
        self.breaker = CircuitBreaker(
            f"model-{uuid.uuid4().hex[:12]}",
            self.client,
            config,
            namespace=self.namespace,
            listeners=[self.seen.append],
            clock=self.clock,
            classify=classify_servicetitan_error,
        )
        self.model = ReferenceBreaker(
            failure_threshold=config.failure_threshold,
            window=config.window_seconds,
            rate=config.failure_rate_threshold,
            minimum_calls=config.minimum_calls,
            open_seconds=config.open_seconds,
            max_open_seconds=config.max_open_seconds,
            multiplier=config.open_backoff_multiplier,
            max_probes=config.half_open_max_calls,
            lease=config.probe_lease_seconds,
        )

    @property
    def now(self) -> float:
        return self.clock.now

    @staticmethod
    def _check_refusal(expected: ModelPermit | float, refused: CircuitBreakerOpenError) -> None:
        assert isinstance(expected, float), "the breaker refused a call the model admits"
        assert refused.retry_after == expected

    @rule(outcome=OUTCOME_NAMES)
    def call(self, outcome: str) -> None:
        make_error, kind = OUTCOMES[outcome]
        expected = self.model.admit(self.now)
        reached: list[bool] = []

        def fn() -> None:
            reached.append(True)
            if make_error is not None:
                raise make_error()

        try:
            self.breaker.call(fn)
        except CircuitBreakerOpenError as refused:
            assert not reached
            self._check_refusal(expected, refused)
            return
        except Exception:
            assert make_error is not None
        assert isinstance(expected, ModelPermit), "the breaker admitted a call the model refuses"
        assert reached
        self.model.settle(expected, kind, self.now)

    @rule(target=held)
    def begin(self) -> Any:
        expected = self.model.admit(self.now)
        try:
            permit = self.breaker.acquire()
        except CircuitBreakerOpenError as refused:
            self._check_refusal(expected, refused)
            return multiple()
        assert isinstance(expected, ModelPermit), "the breaker admitted a call the model refuses"
        assert permit.is_probe == (expected.probe is not None)
        return permit, expected

    @rule(call=consumes(held), outcome=OUTCOME_NAMES)
    def finish(self, call: tuple[BreakerPermit, ModelPermit], outcome: str) -> None:
        permit, expected = call
        make_error, kind = OUTCOMES[outcome]
        if make_error is None:
            permit.success()
        else:
            permit.error(make_error())
        self.model.settle(expected, kind, self.now)

    @rule(halves=st.integers(1, 14))
    def advance(self, halves: int) -> None:
        self.clock.advance(halves * UNIT / 2)

    @precondition(lambda self: self.operator_actions > 0)
    @rule(units=st.integers(1, 5))
    def force_open(self, units: int) -> None:
        self.operator_actions -= 1
        self.breaker.force_open(units * UNIT)
        self.model.force_open(self.now, units * UNIT)

    @precondition(lambda self: self.operator_actions > 0)
    @rule()
    def reset(self) -> None:
        self.operator_actions -= 1
        self.breaker.reset()
        self.model.reset(self.now)

    @precondition(lambda self: self.operator_actions > 0)
    @rule()
    def request_probe(self) -> None:
        self.operator_actions -= 1
        self.breaker.request_probe()
        self.model.request_probe(self.now)

    @invariant()
    def same_state_and_transitions(self) -> None:
        assert self.breaker.state == self.model.peek(self.now)
        seen = [(t.from_state.value, t.to_state.value, t.reason, t.at, t.open_until) for t in self.seen]
        assert seen == self.model.transitions
        # The Redis run never fell back to the per-process breaker (a script error would).
        assert self.breaker.backend == ("redis" if self.client is not None else "local")

    @invariant()
    def admission_read_from_the_keys_matches_the_model(self) -> None:
        """What a watcher (the Airflow trigger) reads from the Redis keys, without running the
        script, is when the model would admit a call: now, or after its ``retry_after``."""
        if self.client is None:
            return
        state_key, _calls, _failures, probes_key = self.breaker.redis_keys
        values = self.client.hmget(state_key, list(STATE_FIELDS))
        fields = {name: value.decode() for name, value in zip(STATE_FIELDS, values, strict=True) if value is not None}
        leases = [score for _member, score in self.client.zrange(probes_key, 0, -1, withscores=True)]
        expected = copy.deepcopy(self.model).admit(self.now)
        wait = seconds_until_admission(
            fields, leases, now=self.now, half_open_max_calls=self.breaker.config.half_open_max_calls
        )
        assert wait == (0.0 if isinstance(expected, ModelPermit) else expected)


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_breaker_follows_the_reference_model(backend: str, redis_client: redis.Redis, key_prefix: str) -> None:
    machine = type(
        "ModelCheck",
        (BreakerMachine,),
        {"client": redis_client if backend == "redis" else None, "namespace": key_prefix},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=100,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    if backend == "redis":
        assert any(True for _ in redis_client.scan_iter(match=f"{key_prefix}:breaker:*"))
