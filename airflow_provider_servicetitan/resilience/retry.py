"""Retry with full-jitter exponential backoff, built on tenacity.

:class:`RetryPolicy` decides, after each failed attempt, whether to try again and how long to wait:

* only errors that ``retry_on`` accepts are retried (by default :func:`is_retryable`); any other
  error is raised at once, unwrapped, after one attempt;
* the wait before attempt ``n + 1`` is ``uniform(0, min(max_delay, base_delay * 2 ** (n - 1)))``
  ("full jitter", so that many workers failing together do not come back together);
* an error with a ``retry_after`` (429 ``Retry-After``, an open circuit breaker) is never retried
  sooner than asked. A requested wait is honoured only within the remaining budget (what
  is left of ``max_elapsed`` if set, else ``max_delay``; for a 429 see below); beyond it the policy gives up at once
  rather than keep an Airflow worker asleep for minutes. ``max_retry_after`` adds a limit for
  server-requested waits alone, so that a caller able to wait elsewhere (an Airflow task that
  defers to the triggerer) gets the error back instead of sleeping;
* being rate limited (``rate_limited``, by default a :class:`RateLimitExceededError`, i.e. a 429)
  is not a failure: such an attempt waits its ``Retry-After`` plus a little jitter (or, without
  one, the backoff) and does not count against ``max_attempts``. Only time bounds it: the wait
  must end within ``max_elapsed`` seconds of the call's start, or ``rate_limit_budget`` seconds
  when ``max_elapsed`` is not set; ``max_retry_after`` applies as above;
* when attempts or time run out, :class:`RetryExhaustedError` is raised ``from`` the last error.

The rule is composed from tenacity's own pieces: ``retry_if_exception`` for ``retry_on``,
``<failures> | <time budget> [| <requested wait too long>]`` for when to give up. Small
callables fill what tenacity cannot express exactly (each says why): tenacity counts every
attempt, where a rate-limited one must not count.
Clock, sleep and random source are injectable, so the behaviour can be tested without sleeping.
This module does not import Airflow.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, NoReturn, ParamSpec, TypeVar

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from airflow_provider_servicetitan.errors import RateLimitExceededError, RetryExhaustedError, is_retryable
from airflow_provider_servicetitan.resilience.checks import (
    is_finite_number,
    require_positive,
    require_positive_int,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_RNG = random.Random()  # noqa: S311 - jitter, not cryptography

#: Default of :attr:`RetryPolicy.rate_limit_budget`: how long (s) a call keeps going through rate limiting.
DEFAULT_RATE_LIMIT_BUDGET = 120.0
#: A rate-limited attempt waits ``retry_after * (1 + uniform(0, RATE_LIMIT_JITTER))``, so that the
#: workers told to come back together do not all come back at the same instant.
RATE_LIMIT_JITTER = 0.1


def is_rate_limit_error(error: BaseException) -> bool:
    """The default :attr:`RetryPolicy.rate_limited`: a :class:`RateLimitExceededError` (429)."""
    return isinstance(error, RateLimitExceededError)


#: Named presets, as a connection can refer to them. Keyword overrides apply on top.
PRESETS: dict[str, dict[str, Any]] = {
    # A quick first retry (a dropped connection, one 500 among many answers costs ~0.1 s, not ~0.5 s),
    # then doubling: up to 3.75 s of patience in all, about what 3 attempts from 1 s gave.
    "default": {"max_attempts": 5, "base_delay": 0.25, "max_delay": 60.0},
    "aggressive": {"max_attempts": 5, "base_delay": 2.0, "max_delay": 60.0},
    "conservative": {"max_attempts": 2, "base_delay": 5.0, "max_delay": 60.0},
}


@dataclass(frozen=True)
class RetryEvent:
    """One retry about to happen: attempt ``attempt`` failed with ``error``; sleeping ``delay`` s."""

    attempt: int
    delay: float
    error: BaseException
    error_class: str
    trace_id: str | None
    rate_limited: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a call. Immutable; safe to share between threads.

    :param max_attempts: attempts in all, the first one included (>= 1); rate-limited attempts
        are not counted.
    :param base_delay: backoff ceiling after the first failure, in seconds.
    :param max_delay: cap on the backoff ceiling; also the most another requested wait (an open
        breaker's) may make us wait when ``max_elapsed`` is not set (a 429's is bounded by
        ``rate_limit_budget`` instead).
    :param max_elapsed: total time budget of one :meth:`call`, in seconds, or ``None``. The policy
        gives up rather than start a sleep that would end past it.
    :param retry_on: which errors are worth another attempt.
    :param max_retry_after: the longest server- or breaker-requested wait (an error's
        ``retry_after``: 429 ``Retry-After``, an open circuit breaker) worth sleeping for, in
        seconds, or ``None`` for no limit but the budget above. An error asking for more ends the
        retries at once with :class:`RetryExhaustedError` from it, whose ``last_error.retry_after``
        tells the caller how long to defer the task instead.
    :param rate_limit_budget: when ``max_elapsed`` is not set, rate-limited attempts are retried
        (without counting against ``max_attempts``) as long as the wait ends within this many
        seconds of the call's start; with ``max_elapsed``, that budget applies instead. Default
        :data:`DEFAULT_RATE_LIMIT_BUDGET`.
    :param rate_limited: which errors say "rate limited" (by default a 429,
        :func:`is_rate_limit_error`); they must be accepted by ``retry_on`` too.
    :param sleep: how to wait (injectable for tests).
    :param clock: monotonic clock in seconds, used for every elapsed-time decision.
    :param rng: random source for the jitter (not security-relevant).
    :param listener: called with a :class:`RetryEvent` before each retry, e.g. to count retries.
    """

    max_attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 60.0
    max_elapsed: float | None = None
    retry_on: Callable[[BaseException], bool] = is_retryable
    max_retry_after: float | None = None
    rate_limit_budget: float = DEFAULT_RATE_LIMIT_BUDGET
    rate_limited: Callable[[BaseException], bool] = is_rate_limit_error
    _: KW_ONLY
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    rng: random.Random | None = field(default=None, repr=False, compare=False)
    listener: Callable[[RetryEvent], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        require_positive_int(self.max_attempts, "max_attempts")
        for name in ("base_delay", "max_delay"):
            value = getattr(self, name)
            if not is_finite_number(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if self.base_delay > self.max_delay:
            raise ValueError(f"base_delay ({self.base_delay}) must not be greater than max_delay ({self.max_delay})")
        if self.max_elapsed is not None:
            require_positive(self.max_elapsed, "max_elapsed")
        require_positive(self.rate_limit_budget, "rate_limit_budget")
        if self.max_retry_after is not None and (
            not is_finite_number(self.max_retry_after) or self.max_retry_after < 0
        ):
            raise ValueError(
                f"max_retry_after must be None or a finite number of seconds >= 0, got {self.max_retry_after!r}"
            )
        for name in ("retry_on", "rate_limited", "sleep", "clock"):
            if not callable(getattr(self, name)):
                raise ValueError(f"{name} must be callable")
        if self.listener is not None and not callable(self.listener):
            raise ValueError("listener must be callable or None")

    # -- presets ---------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> RetryPolicy:
        """The preset called ``name`` (case-insensitive), with ``overrides`` applied."""
        key = str(name).strip().lower()
        if key not in PRESETS:
            raise ValueError(f"unknown retry preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[key], **overrides})

    @classmethod
    def default(cls, **overrides: Any) -> RetryPolicy:
        """5 attempts, backoff from 0.25 s, capped at 60 s."""
        return cls.preset("default", **overrides)

    @classmethod
    def aggressive(cls, **overrides: Any) -> RetryPolicy:
        """5 attempts, backoff from 2 s, capped at 60 s: for jobs that must get through."""
        return cls.preset("aggressive", **overrides)

    @classmethod
    def conservative(cls, **overrides: Any) -> RetryPolicy:
        """2 attempts, backoff from 5 s, capped at 60 s: leave the rest to Airflow's own retries."""
        return cls.preset("conservative", **overrides)

    def with_overrides(self, **changes: Any) -> RetryPolicy:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    # -- running ---------------------------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` under this policy and return its result."""
        name = _name_of(fn)
        attempts = _Attempts(self.rate_limited)
        budget = _StopPastBudget(self, attempts, started=self.clock())
        stop = _StopAfterFailures(self.max_attempts, attempts) | budget
        too_long: _StopOnLongRetryAfter | None = None
        if self.max_retry_after is not None:
            too_long = _StopOnLongRetryAfter(self.max_retry_after)
            stop = stop | too_long
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self.retry_on),
            stop=stop,
            wait=_Wait(self, attempts),
            before_sleep=functools.partial(self._announce_retry, name, attempts),
            retry_error_callback=functools.partial(self._give_up, name, attempts, budget, too_long),
            sleep=lambda seconds: self.sleep(float(seconds)),
        )
        # Bound here, not passed through: tenacity's own first parameter is called ``fn`` too.
        return retrying(functools.partial(fn, *args, **kwargs))

    def _announce_retry(self, fn_name: str, attempts: _Attempts, state: tenacity.RetryCallState) -> None:
        """Log the retry about to happen and tell the listener (tenacity's ``before_sleep``)."""
        error = _error(state)
        assert error is not None  # noqa: S101 - tenacity only sleeps after a retried failure
        delay = state.upcoming_sleep
        event = RetryEvent(
            attempt=state.attempt_number,
            delay=delay,
            error=error,
            error_class=type(error).__name__,
            trace_id=_trace_id(error),
            rate_limited=attempts.rate_limited(state),
        )
        # Only the class and the traceId: an error's message or the call's arguments could hold
        # data we must not log.
        if event.rate_limited:
            template = "%s: attempt %d rate limited (%s, traceId=%s), not counted as a failure; retrying in %.2fs"
            args: tuple[Any, ...] = (fn_name, event.attempt, event.error_class, event.trace_id or "-", delay)
        else:
            template = "%s: attempt %d of %d failed with %s (traceId=%s); retrying in %.2fs"
            args = (
                fn_name,
                attempts.failures(state),
                self.max_attempts,
                event.error_class,
                event.trace_id or "-",
                delay,
            )
        log.log(
            logging.INFO if event.rate_limited else logging.WARNING,
            template,
            *args,
            extra={
                "retry_attempt": event.attempt,
                "retry_delay": delay,
                "retry_error_class": event.error_class,
                "retry_trace_id": event.trace_id,
            },
        )
        if self.listener is not None:
            try:
                self.listener(event)
            except Exception:
                # Metrics must never break a sync.
                log.warning("retry listener %s failed", _name_of(self.listener), exc_info=True)

    def _give_up(
        self,
        fn_name: str,
        attempts: _Attempts,
        budget: _StopPastBudget,
        too_long: _StopOnLongRetryAfter | None,
        state: tenacity.RetryCallState,
    ) -> NoReturn:
        """Log why and raise :class:`RetryExhaustedError` from the last error (tenacity's
        ``retry_error_callback``)."""
        error = _error(state)
        assert error is not None  # noqa: S101 - tenacity only stops after a retried failure
        if not attempts.rate_limited(state) and attempts.failures(state) >= self.max_attempts:
            reason = "no attempts left"
        elif too_long is not None and too_long(state):
            reason = too_long.why(state)
        else:
            reason = budget.why(state)
        log.warning(
            "%s: giving up after %d attempt%s, last error %s (traceId=%s): %s",
            fn_name,
            state.attempt_number,
            "" if state.attempt_number == 1 else "s",
            type(error).__name__,
            _trace_id(error) or "-",
            reason,
        )
        raise RetryExhaustedError(state.attempt_number, error) from error


class _Attempts:
    """What each attempt of one call was: rate limited or a failure. tenacity's ``attempt_number``
    counts both; ``max_attempts`` and the backoff count failures only."""

    def __init__(self, rate_limited: Callable[[BaseException], bool]) -> None:
        self._is_rate_limited = rate_limited
        self._kinds: dict[int, bool] = {}

    def rate_limited(self, state: tenacity.RetryCallState) -> bool:
        """Whether the attempt that just ended was rate limited."""
        number = state.attempt_number
        if number not in self._kinds:
            error = _error(state)
            self._kinds[number] = error is not None and bool(self._is_rate_limited(error))
        return self._kinds[number]

    def failures(self, state: tenacity.RetryCallState) -> int:
        """Failed attempts (rate-limited ones not counted) up to the one that just ended."""
        self.rate_limited(state)
        return sum(1 for limited in self._kinds.values() if not limited)

    def rate_limits(self, state: tenacity.RetryCallState) -> int:
        """Rate-limited attempts up to the one that just ended."""
        self.rate_limited(state)
        return sum(1 for limited in self._kinds.values() if limited)


class _Wait(wait_base):
    """How long to wait before the next attempt.

    After a failure: full jitter, ``uniform(0, min(max_delay, base_delay * 2 ** (n - 1)))`` after
    the ``n``-th failure, or longer if the error asks for it (an open breaker's ``retry_after``;
    tenacity combines waits by sum or in sequence, not by maximum). tenacity's
    ``wait_random_exponential`` computes the same ceiling from every attempt and draws from the
    module-level ``random``; this counts failures only and draws from the policy's ``rng``. It draws
    nothing after the last attempt (tenacity asks ``wait`` before ``stop``).

    After a rate-limited attempt: its ``retry_after`` stretched by up to :data:`RATE_LIMIT_JITTER`,
    or, without one, the full-jitter backoff of the ``n``-th rate-limited attempt.
    """

    def __init__(self, policy: RetryPolicy, attempts: _Attempts) -> None:
        self._policy = policy
        self._attempts = attempts
        self._rng = policy.rng or _RNG

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        retry_after = _retry_after(_error(retry_state))
        if self._attempts.rate_limited(retry_state):
            if retry_after is not None:
                return retry_after * (1.0 + self._rng.uniform(0.0, RATE_LIMIT_JITTER))
            return self._backoff(self._attempts.rate_limits(retry_state))
        failures = self._attempts.failures(retry_state)
        if failures >= self._policy.max_attempts:
            return 0.0
        delay = self._backoff(failures)
        return delay if retry_after is None else max(delay, retry_after)

    def _backoff(self, n: int) -> float:
        policy = self._policy
        if policy.base_delay <= 0:
            return self._rng.uniform(0.0, 0.0)
        # 2 ** 1100 overflows a float; long before that the ceiling is max_delay.
        ceiling = min(policy.max_delay, policy.base_delay * 2.0 ** min(n - 1, 1000))
        return self._rng.uniform(0.0, ceiling)


class _StopAfterFailures(stop_base):
    """Stop once ``max_attempts`` attempts failed; rate-limited attempts do not count
    (tenacity's ``stop_after_attempt`` counts every attempt)."""

    def __init__(self, max_attempts: int, attempts: _Attempts) -> None:
        self._max_attempts = max_attempts
        self._attempts = attempts

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        if self._attempts.rate_limited(retry_state):
            return False
        return self._attempts.failures(retry_state) >= self._max_attempts


class _StopPastBudget(stop_base):
    """Stop rather than start a sleep (``retry_state.upcoming_sleep``) that would end past the budget.

    After a failure the budget is what is left of ``max_elapsed`` on the policy's clock, or
    ``max_delay`` without one (only a server's ``Retry-After`` can ask for more than ``max_delay``).
    After a rate-limited attempt it is what is left of ``max_elapsed``, or of ``rate_limit_budget``
    without one, since the call started. tenacity's ``stop_before_delay`` does the first with its own
    ``time.monotonic`` start, which a test cannot move, and has no notion of the others.
    """

    def __init__(self, policy: RetryPolicy, attempts: _Attempts, *, started: float) -> None:
        self._policy = policy
        self._attempts = attempts
        self._started = started

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        left = self._left(retry_state)
        out_of_time = (self._bounded(retry_state)) and left <= 0
        return out_of_time or retry_state.upcoming_sleep > left

    def why(self, retry_state: tenacity.RetryCallState) -> str:
        """Why this stopped the retries, for the log."""
        left = self._left(retry_state)
        retry_after = _retry_after(_error(retry_state))
        if retry_after is not None and retry_after > left:
            return f"asked to wait {retry_after:.2f}s, more than the {max(left, 0):.2f}s left"
        if self._attempts.rate_limited(retry_state):
            return (
                f"a {retry_state.upcoming_sleep:.2f}s wait would pass the time budget of rate-limited retries "
                f"(max_elapsed={self._policy.max_elapsed}s, else rate_limit_budget={self._policy.rate_limit_budget:g}s)"
            )
        return f"a {retry_state.upcoming_sleep:.2f}s wait would pass max_elapsed={self._policy.max_elapsed}s"

    def _bounded(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._policy.max_elapsed is not None or self._attempts.rate_limited(retry_state)

    def _left(self, retry_state: tenacity.RetryCallState) -> float:
        policy = self._policy
        elapsed = policy.clock() - self._started
        if self._attempts.rate_limited(retry_state):
            budget = policy.max_elapsed if policy.max_elapsed is not None else policy.rate_limit_budget
            return budget - elapsed
        if policy.max_elapsed is None:
            return policy.max_delay
        return policy.max_elapsed - elapsed


class _StopOnLongRetryAfter(stop_base):
    """Stop at once when the error asks for a wait longer than ``max_retry_after``.

    Unlike the budget, this looks at the requested wait alone, not at the sleep the backoff would
    add: it answers "is the service asking for more patience than this caller has in a worker?".
    """

    def __init__(self, limit: float) -> None:
        self._limit = limit

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        retry_after = _retry_after(_error(retry_state))
        return retry_after is not None and retry_after > self._limit

    def why(self, retry_state: tenacity.RetryCallState) -> str:
        """Why this stopped the retries, for the log."""
        retry_after = _retry_after(_error(retry_state))
        return (
            f"asked to wait {retry_after or 0.0:.2f}s, more than max_retry_after={self._limit:g}s: "
            "left to the caller to wait without holding a worker"
        )


def _error(state: tenacity.RetryCallState) -> BaseException | None:
    outcome = state.outcome
    if outcome is None or not outcome.failed:
        return None
    return outcome.exception()


def _retry_after(error: BaseException | None) -> float | None:
    value = getattr(error, "retry_after", None)
    return float(value) if is_finite_number(value) and value >= 0 else None


def _trace_id(error: BaseException) -> str | None:
    trace_id = getattr(error, "trace_id", None)
    return str(trace_id) if trace_id else None


def _name_of(fn: object) -> str:
    return str(getattr(fn, "__qualname__", type(fn).__name__))
