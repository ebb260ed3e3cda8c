"""Retry with full-jitter exponential backoff, built on tenacity.

:class:`RetryPolicy` decides, after each failed attempt, whether to try again and how long to wait:

* only errors that ``retry_on`` accepts are retried (by default :func:`is_retryable`); any other
  error is raised at once, unwrapped, after one attempt;
* the wait before attempt ``n + 1`` is ``uniform(0, min(max_delay, base_delay * 2 ** (n - 1)))``
  ("full jitter", so that many workers failing together do not come back together);
* an error with a ``retry_after`` (429 ``Retry-After``, an open circuit breaker) is never retried
  sooner than asked. A server-requested wait is honoured only within the remaining budget (what
  is left of ``max_elapsed`` if set, else ``max_delay``); beyond it the policy gives up at once
  rather than keep an Airflow worker asleep for minutes;
* when attempts or time run out, :class:`RetryExhaustedError` is raised ``from`` the last error.

Clock, sleep and random source are injectable, so the behaviour can be tested without sleeping.
This module does not import Airflow.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, NoReturn, ParamSpec, TypeGuard, TypeVar

import tenacity

from airflow_provider_servicetitan.errors import RetryExhaustedError, is_retryable

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
    _: KW_ONLY
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    rng: random.Random | None = field(default=None, repr=False, compare=False)
    listener: Callable[[RetryEvent], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("base_delay", "max_delay"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if self.base_delay > self.max_delay:
            raise ValueError(f"base_delay ({self.base_delay}) must not be greater than max_delay ({self.max_delay})")
        if self.max_elapsed is not None and (not _is_number(self.max_elapsed) or self.max_elapsed <= 0):
            raise ValueError(f"max_elapsed must be None or a finite number of seconds > 0, got {self.max_elapsed!r}")
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
        run = _Run(self, _name_of(fn))
        retrying = tenacity.Retrying(
            retry=run.retry,
            stop=run.stop,
            wait=run.wait,
            before_sleep=run.before_sleep,
            retry_error_callback=run.give_up,
            sleep=lambda seconds: self.sleep(float(seconds)),
        )
        # Bound here, not passed through: tenacity's own first parameter is called ``fn`` too.
        return retrying(functools.partial(fn, *args, **kwargs))


class _Run:
    """The state of one :meth:`RetryPolicy.call`: its start on the policy's clock and its plan.

    tenacity asks ``stop`` and ``wait`` separately (in an order that changed between versions);
    both read one plan per attempt, so the jitter is drawn once and the delay that was checked
    against the budget is exactly the delay that is slept.
    """

    def __init__(self, policy: RetryPolicy, fn_name: str) -> None:
        self.policy = policy
        self.fn_name = fn_name
        self.rng = policy.rng or _RNG
        self.started = policy.clock()
        self._planned_for = 0
        self._delay: float | None = None  # None: give up
        self._reason = ""

    def retry(self, state: tenacity.RetryCallState) -> bool:
        error = _error(state)
        return error is not None and bool(self.policy.retry_on(error))

    def stop(self, state: tenacity.RetryCallState) -> bool:
        return self._plan(state) is None

    def wait(self, state: tenacity.RetryCallState) -> float:
        return self._plan(state) or 0.0

    def _plan(self, state: tenacity.RetryCallState) -> float | None:
        """The sleep before the next attempt, or ``None`` to give up (``_reason`` says why)."""
        attempt = state.attempt_number
        if self._planned_for == attempt:
            return self._delay
        self._planned_for, self._delay = attempt, None
        policy = self.policy
        if attempt >= policy.max_attempts:
            self._reason = "no attempts left"
            return None
        ceiling = min(policy.max_delay, policy.base_delay * 2.0 ** min(attempt - 1, 1023))
        delay = self.rng.uniform(0.0, ceiling)
        remaining = None
        if policy.max_elapsed is not None:
            remaining = policy.max_elapsed - (policy.clock() - self.started)
        retry_after = _retry_after(_error(state))
        if retry_after is not None:
            budget = policy.max_delay if remaining is None else remaining
            if retry_after > budget:
                self._reason = f"asked to wait {retry_after:.2f}s, more than the {max(budget, 0):.2f}s left"
                return None
            delay = max(delay, retry_after)
        if remaining is not None and (remaining <= 0 or delay > remaining):
            self._reason = f"a {delay:.2f}s wait would pass max_elapsed={policy.max_elapsed:g}s"
            return None
        self._delay = delay
        return delay

    def before_sleep(self, state: tenacity.RetryCallState) -> None:
        error = _error(state)
        assert error is not None  # noqa: S101 - tenacity only sleeps after a retried failure
        delay = self._delay or 0.0
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
            self.fn_name,
            event.attempt,
            self.policy.max_attempts,
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
        if self.policy.listener is not None:
            try:
                self.policy.listener(event)
            except Exception:
                # Metrics must never break a sync.
                log.warning("retry listener %s failed", _name_of(self.policy.listener), exc_info=True)

    def give_up(self, state: tenacity.RetryCallState) -> NoReturn:
        error = _error(state)
        assert error is not None  # noqa: S101 - tenacity only stops after a retried failure
        log.warning(
            "%s: giving up after %d attempt%s, last error %s (traceId=%s): %s",
            self.fn_name,
            state.attempt_number,
            "" if state.attempt_number == 1 else "s",
            type(error).__name__,
            _trace_id(error) or "-",
            self._reason,
        )
        raise RetryExhaustedError(state.attempt_number, error) from error


def _error(state: tenacity.RetryCallState) -> BaseException | None:
    outcome = state.outcome
    if outcome is None or not outcome.failed:
        return None
    return outcome.exception()


def _retry_after(error: BaseException | None) -> float | None:
    value = getattr(error, "retry_after", None)
    return float(value) if _is_number(value) and value >= 0 else None


def _trace_id(error: BaseException) -> str | None:
    trace_id = getattr(error, "trace_id", None)
    return str(trace_id) if trace_id else None


def _name_of(fn: object) -> str:
    return str(getattr(fn, "__qualname__", type(fn).__name__))


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
