"""Retry with full-jitter exponential backoff, built on tenacity.

:class:`RetryPolicy` decides, after each failed attempt, whether to try again and how long to wait:

* only errors that ``retry_on`` accepts are retried (by default :func:`is_retryable`); any other
  error is raised at once, unwrapped, after one attempt;
* the wait before attempt ``n + 1`` is ``uniform(0, min(max_delay, base_delay * 2 ** (n - 1)))``
  ("full jitter", so that many workers failing together do not come back together);
* an error with a ``retry_after`` (429 ``Retry-After``, an open circuit breaker) is never retried
  sooner than asked. A server-requested wait is honoured only within the remaining budget (what
  is left of ``max_elapsed`` if set, else ``max_delay``); beyond it the policy gives up at once
  rather than keep an Airflow worker asleep for minutes. ``max_retry_after`` adds a limit for
  server-requested waits alone, so that a caller able to wait elsewhere (an Airflow task that
  defers to the triggerer) gets the error back instead of sleeping;
* when attempts or time run out, :class:`RetryExhaustedError` is raised ``from`` the last error.

The rule is composed from tenacity's own pieces: ``retry_if_exception`` for ``retry_on``,
``stop_after_attempt | <time budget> [| <requested wait too long>]`` for when to give up,
``wait_exponential`` for the backoff ceiling. Small callables fill what tenacity cannot express
exactly (each says why).
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

from airflow_provider_servicetitan.errors import RetryExhaustedError, is_retryable
from airflow_provider_servicetitan.resilience.checks import (
    is_finite_number,
    require_positive,
    require_positive_int,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_RNG = random.Random()  # noqa: S311 - jitter, not cryptography

#: Named presets, as a connection can refer to them. Keyword overrides apply on top.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"max_attempts": 3, "base_delay": 1.0, "max_delay": 60.0},
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


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a call. Immutable; safe to share between threads.

    :param max_attempts: attempts in all, the first one included (>= 1).
    :param base_delay: backoff ceiling after the first failure, in seconds.
    :param max_delay: cap on the backoff ceiling; also the most a ``Retry-After`` may make us wait
        when ``max_elapsed`` is not set.
    :param max_elapsed: total time budget of one :meth:`call`, in seconds, or ``None``. The policy
        gives up rather than start a sleep that would end past it.
    :param retry_on: which errors are worth another attempt.
    :param max_retry_after: the longest server- or breaker-requested wait (an error's
        ``retry_after``: 429 ``Retry-After``, an open circuit breaker) worth sleeping for, in
        seconds, or ``None`` for no limit but the budget above. An error asking for more ends the
        retries at once with :class:`RetryExhaustedError` from it, whose ``last_error.retry_after``
        tells the caller how long to defer the task instead.
    :param sleep: how to wait (injectable for tests).
    :param clock: monotonic clock in seconds, used for every elapsed-time decision.
    :param rng: random source for the jitter (not security-relevant).
    :param listener: called with a :class:`RetryEvent` before each retry, e.g. to count retries.
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_elapsed: float | None = None
    retry_on: Callable[[BaseException], bool] = is_retryable
    max_retry_after: float | None = None
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
        if self.max_retry_after is not None and (
            not is_finite_number(self.max_retry_after) or self.max_retry_after < 0
        ):
            raise ValueError(
                f"max_retry_after must be None or a finite number of seconds >= 0, got {self.max_retry_after!r}"
            )
        for name in ("retry_on", "sleep", "clock"):
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
        """3 attempts, backoff from 1 s, capped at 60 s."""
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
        budget = _StopPastBudget(self, started=self.clock())
        stop = tenacity.stop_after_attempt(self.max_attempts) | budget
        too_long: _StopOnLongRetryAfter | None = None
        if self.max_retry_after is not None:
            too_long = _StopOnLongRetryAfter(self.max_retry_after)
            stop = stop | too_long
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self.retry_on),
            stop=stop,
            wait=_WaitAtLeastRetryAfter(_WaitFullJitter(self)),
            before_sleep=functools.partial(self._announce_retry, name),
            retry_error_callback=functools.partial(self._give_up, name, budget, too_long),
            sleep=lambda seconds: self.sleep(float(seconds)),
        )
        # Bound here, not passed through: tenacity's own first parameter is called ``fn`` too.
        return retrying(functools.partial(fn, *args, **kwargs))

    def _announce_retry(self, fn_name: str, state: tenacity.RetryCallState) -> None:
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
        )
        # Only the class and the traceId: an error's message or the call's arguments could hold
        # data we must not log.
        log.warning(
            "%s: attempt %d of %d failed with %s (traceId=%s); retrying in %.2fs",
            fn_name,
            event.attempt,
            self.max_attempts,
            event.error_class,
            event.trace_id or "-",
            delay,
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
        budget: _StopPastBudget,
        too_long: _StopOnLongRetryAfter | None,
        state: tenacity.RetryCallState,
    ) -> NoReturn:
        """Log why and raise :class:`RetryExhaustedError` from the last error (tenacity's
        ``retry_error_callback``)."""
        error = _error(state)
        assert error is not None  # noqa: S101 - tenacity only stops after a retried failure
        if state.attempt_number >= self.max_attempts:
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


class _WaitFullJitter(tenacity.wait_exponential):
    """Full jitter: ``uniform(0, min(max_delay, base_delay * 2 ** (n - 1)))`` before attempt ``n + 1``.

    tenacity's ``wait_random_exponential`` computes the same ceiling (inherited here), but draws
    from the module-level ``random``; this draws from the policy's injectable ``rng``. It draws
    nothing after the last attempt: tenacity asks ``wait`` before ``stop``, and no sleep follows
    the last attempt. A ``base_delay`` of 0 keeps every ceiling at 0 (tenacity 9.2's
    ``wait_exponential`` returns ``max`` once ``2 ** n`` overflows a float, whatever the multiplier).
    """

    def __init__(self, policy: RetryPolicy) -> None:
        super().__init__(multiplier=policy.base_delay, max=policy.max_delay)
        self._last_attempt = policy.max_attempts
        self._rng = policy.rng or _RNG

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        if retry_state.attempt_number >= self._last_attempt:
            return 0.0
        ceiling = super().__call__(retry_state) if self.multiplier > 0 else 0.0
        return self._rng.uniform(0.0, ceiling)


class _WaitAtLeastRetryAfter(wait_base):
    """The backoff, or longer if the error asks for it (429 ``Retry-After``, an open breaker).

    tenacity combines waits by sum (``+``) or in sequence (``wait_chain``), not by maximum.
    """

    def __init__(self, backoff: wait_base) -> None:
        self._backoff = backoff

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        delay = self._backoff(retry_state)
        retry_after = _retry_after(_error(retry_state))
        return delay if retry_after is None else max(delay, retry_after)


class _StopPastBudget(stop_base):
    """Stop rather than start a sleep (``retry_state.upcoming_sleep``) that would end past the budget.

    The budget is what is left of ``max_elapsed`` on the policy's clock, or ``max_delay`` without
    one (only a server's ``Retry-After`` can ask for more than ``max_delay``). tenacity's
    ``stop_before_delay`` does the first with its own ``time.monotonic`` start, which a test cannot
    move, and has no notion of the second.
    """

    def __init__(self, policy: RetryPolicy, *, started: float) -> None:
        self._policy = policy
        self._started = started

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        left = self._left()
        out_of_time = self._policy.max_elapsed is not None and left <= 0
        return out_of_time or retry_state.upcoming_sleep > left

    def why(self, retry_state: tenacity.RetryCallState) -> str:
        """Why this stopped the retries, for the log."""
        left = self._left()
        retry_after = _retry_after(_error(retry_state))
        if retry_after is not None and retry_after > left:
            return f"asked to wait {retry_after:.2f}s, more than the {max(left, 0):.2f}s left"
        return f"a {retry_state.upcoming_sleep:.2f}s wait would pass max_elapsed={self._policy.max_elapsed}s"

    def _left(self) -> float:
        policy = self._policy
        if policy.max_elapsed is None:
            return policy.max_delay
        return policy.max_elapsed - (policy.clock() - self._started)


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
