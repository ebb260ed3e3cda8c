"""Which ServiceTitan errors say the service is failing: the classifier of its circuit breakers.

The breaker in :mod:`airflow_provider_servicetitan.resilience.breaker` is generic; whoever builds
one for ServiceTitan passes :func:`classify_servicetitan_error` as its ``classify``.
"""

from __future__ import annotations

import requests

from airflow_provider_servicetitan.errors import (
    CircuitBreakerOpenError,
    RateLimitExceededError,
    ServiceTitanConnectionError,
    ServiceTitanServerError,
    ServiceTitanTimeoutError,
    error_from_exception,
    root_cause,
)
from airflow_provider_servicetitan.resilience.breaker import CallOutcome

__all__ = ["classify_servicetitan_error"]


def classify_servicetitan_error(error: BaseException) -> CallOutcome:
    """How a ServiceTitan call that raised ``error`` counts for its breaker.

    A breaker around a retry judges the attempt the retry gave up on. Failures: 5xx (maintenance
    included), timeouts and broken connections. Ignored: rate limiting and another breaker's
    refusal, which say nothing about the service's health, and interruptions that are not an
    ``Exception``. Anything else (4xx, rejected credentials, a bug) is a success: the service
    answered.
    """
    error = root_cause(error)
    if not isinstance(error, Exception) or isinstance(error, RateLimitExceededError | CircuitBreakerOpenError):
        return CallOutcome.IGNORED
    if isinstance(error, requests.RequestException):
        error = error_from_exception(error)
    if isinstance(error, ServiceTitanServerError | ServiceTitanTimeoutError | ServiceTitanConnectionError):
        return CallOutcome.FAILURE
    return CallOutcome.SUCCESS
