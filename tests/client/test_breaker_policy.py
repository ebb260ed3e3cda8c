"""How ServiceTitan errors count for a circuit breaker (the classifier the client layer injects)."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.errors import (
    AuthenticationError,
    BadRequestError,
    CircuitBreakerOpenError,
    InvalidCredentialsError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitExceededError,
    RetryExhaustedError,
    ServiceTitanConnectionError,
    ServiceTitanServerError,
    ServiceTitanTimeoutError,
    ServiceUnavailableError,
)
from airflow_provider_servicetitan.resilience.breaker import CallOutcome, CircuitBreaker


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.url = "https://api.example/jpm/v2/tenant/1/jobs"
    return requests.HTTPError(response=response)


FAILURE, SUCCESS, IGNORED = CallOutcome.FAILURE, CallOutcome.SUCCESS, CallOutcome.IGNORED


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ServiceTitanServerError(status=500), FAILURE),
        (ServiceUnavailableError(status=503), FAILURE),
        (ServiceUnavailableError(status=409, title="Suspended for maintenance"), FAILURE),
        (ServiceTitanTimeoutError("timed out"), FAILURE),
        (ServiceTitanConnectionError("reset"), FAILURE),
        (requests.Timeout(), FAILURE),
        (requests.ConnectionError(), FAILURE),
        (requests.exceptions.ChunkedEncodingError(), FAILURE),
        (_http_error(502), FAILURE),
        (RetryExhaustedError(3, ServiceTitanServerError(status=500)), FAILURE),
        (RetryExhaustedError(2, RetryExhaustedError(3, ServiceTitanTimeoutError("timed out"))), FAILURE),
        (BadRequestError(status=400), SUCCESS),
        (AuthenticationError(status=401), SUCCESS),
        (InvalidCredentialsError(status=401), SUCCESS),
        (PermissionDeniedError(status=403), SUCCESS),
        (NotFoundError(status=404), SUCCESS),
        (_http_error(404), SUCCESS),
        (ValueError("bug"), SUCCESS),
        (RateLimitExceededError(status=429), IGNORED),
        (RetryExhaustedError(3, RateLimitExceededError(status=429)), IGNORED),
        (CircuitBreakerOpenError("other", 5), IGNORED),
        (KeyboardInterrupt(), IGNORED),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_servicetitan_classification(error: BaseException, outcome: CallOutcome) -> None:
    assert classify_servicetitan_error(error) is outcome


def test_a_breaker_given_the_classifier_is_not_opened_by_client_errors() -> None:
    """The same 404s open a breaker with the default classifier and not one given this one."""
    not_found = NotFoundError(status=404)

    def fail() -> None:
        raise not_found

    generic = CircuitBreaker("generic", None)
    servicetitan = CircuitBreaker("servicetitan", None, classify=classify_servicetitan_error)
    for breaker in (generic, servicetitan):
        for _ in range(generic.config.minimum_calls):
            with pytest.raises(NotFoundError):
                breaker.call(fail)
    assert (generic.state, servicetitan.state) == ("open", "closed")
