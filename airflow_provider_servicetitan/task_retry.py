"""An Airflow task ``retry_policy`` that knows the provider's errors.

Airflow asks it, in the worker, what to do with the exception that failed a task try:

* an error of ours that no retry can fix (rejected credentials, a misconfigured connection, 400,
  403, 404, a conflict...) fails the task at once, without spending its remaining retries;
* a rate limit (429) is retried no sooner than ServiceTitan's ``Retry-After``, and never sooner
  than ``min_delay``;
* an open circuit breaker is retried when the breaker will admit a probe (its ``retry_after``,
  at least ``min_delay``), plus a random ``probe_jitter`` so that tasks sharing the breaker do not
  all come back at the same instant;
* any other error of ours that is worth retrying (5xx, timeouts, connection resets, a token
  endpoint hiccup) gets Airflow's own retry schedule (``retry_delay``, exponential backoff,
  ``max_retry_delay``);
* an exception that is not ours also gets Airflow's own behaviour.

A :class:`~airflow_provider_servicetitan.errors.RetryExhaustedError` is judged by the error the
in-task retries gave up on. As with any Airflow retry policy, a retry still counts against the
task's ``retries``: the policy can fail a task early, never retry it more often.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.definitions.retry_policy import RetryDecision, RetryPolicy

from airflow_provider_servicetitan.errors import (
    CircuitBreakerOpenError,
    RateLimitExceededError,
    ServiceTitanError,
    is_retryable,
    root_cause,
)

if TYPE_CHECKING:
    from airflow.sdk.definitions.context import Context

__all__ = ["ServiceTitanRetryPolicy", "started_by_clear"]

_RNG = random.Random()  # noqa: S311 - jitter, not cryptography

_TYPE = f"{__name__}.ServiceTitanRetryPolicy"


def started_by_clear(try_number: int, max_tries: int, retries: int) -> bool:
    """Whether the try ``try_number`` was started by a person clearing the task, not by a retry.

    Airflow's Clear sets ``max_tries`` to the last try number plus the task's ``retries``, so the
    try after a Clear has ``retries`` tries left after it, like the first try of a run; an automatic
    retry has fewer. (A first try is not a Clear: nothing was tried before it.)
    """
    return try_number > 1 and max_tries - try_number == retries - 1


def _check_delay(value: object, name: str) -> None:
    if not isinstance(value, timedelta) or value < timedelta(0):
        raise ValueError(f"{name} must be a timedelta >= 0, got {value!r}")


@dataclass(frozen=True)
class ServiceTitanRetryPolicy(RetryPolicy):
    """Retry decisions for tasks that call ServiceTitan through this provider.

    :param min_delay: the shortest wait before retrying a rate-limited or breaker-refused task.
    :param probe_jitter: up to this much is added at random to the wait for an open breaker.
    """

    min_delay: timedelta = timedelta(seconds=30)
    probe_jitter: timedelta = timedelta(seconds=5)

    def __post_init__(self) -> None:
        _check_delay(self.min_delay, "min_delay")
        _check_delay(self.probe_jitter, "probe_jitter")

    def evaluate(
        self,
        exception: BaseException,
        try_number: int,
        max_tries: int,
        context: Context | None = None,
    ) -> RetryDecision:
        if not isinstance(exception, ServiceTitanError):
            return RetryDecision.default()
        if not is_retryable(exception):
            return RetryDecision.fail(f"{type(exception).__name__} is not retryable: {exception}")
        error = root_cause(exception)
        if isinstance(error, RateLimitExceededError):
            delay = max(error.retry_after or 0.0, self.min_delay.total_seconds())
            return RetryDecision.retry(
                timedelta(seconds=delay), f"rate limited by ServiceTitan; retrying in {delay:g}s"
            )
        if isinstance(error, CircuitBreakerOpenError):
            delay = max(error.retry_after, self.min_delay.total_seconds())
            delay += _RNG.uniform(0.0, self.probe_jitter.total_seconds())
            return RetryDecision.retry(
                timedelta(seconds=delay),
                f"circuit breaker {error.breaker_name!r} is open; retrying in {delay:.1f}s, when it admits a probe",
            )
        return RetryDecision.default()

    def serialize(self) -> dict[str, Any]:
        return {
            "__type": _TYPE,
            "min_delay": self.min_delay.total_seconds(),
            "probe_jitter": self.probe_jitter.total_seconds(),
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ServiceTitanRetryPolicy:
        if data.get("__type") != _TYPE:
            raise ValueError(f"not a serialized {cls.__name__}: __type is {data.get('__type')!r}")
        return cls(
            min_delay=timedelta(seconds=data["min_delay"]),
            probe_jitter=timedelta(seconds=data["probe_jitter"]),
        )
