"""ServiceTitanRetryPolicy: every mapping from our errors to an Airflow retry decision, and a DAG
that uses it going through Airflow's own serialization."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import requests
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task
from airflow.sdk.definitions.retry_policy import RetryAction, RetryDecision
from airflow.serialization.serialized_objects import DagSerialization

from airflow_provider_servicetitan.errors import (
    AuthenticationError,
    BadRequestError,
    CircuitBreakerOpenError,
    ConflictError,
    CredentialValidationError,
    InvalidCredentialsError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitExceededError,
    RecordValidationError,
    RetryExhaustedError,
    ServiceTitanConnectionError,
    ServiceTitanError,
    ServiceTitanServerError,
    ServiceTitanTimeoutError,
    ServiceUnavailableError,
    TokenRefreshError,
)
from airflow_provider_servicetitan.task_retry import ServiceTitanRetryPolicy, started_by_clear

NO_JITTER = ServiceTitanRetryPolicy(probe_jitter=timedelta(0))


def decide(error: BaseException, policy: ServiceTitanRetryPolicy = NO_JITTER) -> RetryDecision:
    return policy.evaluate(error, try_number=1, max_tries=4)


@pytest.mark.parametrize(
    "error",
    [
        InvalidCredentialsError(status=401, title="invalid_client"),
        AuthenticationError(status=401),
        CredentialValidationError("tenant_id", "digits only", conn_id="servicetitan_acme"),
        BadRequestError(status=400, field_errors={"modifiedOnOrAfter": ["not a date"]}),
        PermissionDeniedError(status=403, trace_id="trace-1"),
        NotFoundError(status=404),
        ConflictError(status=409),
        RecordValidationError("customer 7 has no id", resource="customers"),
        ServiceTitanError("request failed (InvalidURL)"),
        RetryExhaustedError(3, PermissionDeniedError(status=403)),
        RetryExhaustedError(2, ValueError("a bug retried by a custom retry_on")),
    ],
    ids=lambda error: f"{type(error).__name__}-{error}"[:60],
)
def test_errors_no_retry_can_fix_fail_the_task_at_once(error):
    decision = decide(error)

    assert decision.action is RetryAction.FAIL
    assert decision.retry_delay is None
    assert decision.reason == f"{type(error).__name__} is not retryable: {error}"


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(120.0, 120.0), (30.0, 30.0), (5.0, 30.0), (0.0, 30.0), (None, 30.0)],
)
def test_rate_limit_waits_for_retry_after_and_at_least_min_delay(retry_after, expected):
    for error in (
        RateLimitExceededError(status=429, retry_after=retry_after),
        RetryExhaustedError(4, RateLimitExceededError(status=429, retry_after=retry_after)),
    ):
        decision = decide(error)

        assert decision == RetryDecision.retry(
            timedelta(seconds=expected), f"rate limited by ServiceTitan; retrying in {expected:g}s"
        )


def test_rate_limit_min_delay_is_configurable():
    policy = ServiceTitanRetryPolicy(min_delay=timedelta(minutes=2))

    assert decide(RateLimitExceededError(status=429, retry_after=61), policy).retry_delay == timedelta(minutes=2)
    assert decide(RateLimitExceededError(status=429, retry_after=150), policy).retry_delay == timedelta(seconds=150)


@pytest.mark.parametrize(("retry_after", "expected"), [(45.0, 45.0), (599.5, 599.5), (3.0, 30.0), (0.0, 30.0)])
def test_open_breaker_retries_when_it_admits_a_probe(retry_after, expected):
    for error in (
        CircuitBreakerOpenError("tenant-42", retry_after),
        RetryExhaustedError(2, CircuitBreakerOpenError("tenant-42", retry_after)),
    ):
        decision = decide(error)

        assert decision.action is RetryAction.RETRY
        assert decision.retry_delay == timedelta(seconds=expected)
        assert decision.reason == (
            f"circuit breaker 'tenant-42' is open; retrying in {expected:.1f}s, when it admits a probe"
        )


def test_open_breaker_wait_is_jittered_but_never_earlier_than_the_probe():
    policy = ServiceTitanRetryPolicy(probe_jitter=timedelta(seconds=5))
    error = CircuitBreakerOpenError("tenant-42", 100.0)

    delays = {decide(error, policy).retry_delay for _ in range(200)}

    assert all(timedelta(seconds=100) <= delay <= timedelta(seconds=105) for delay in delays)  # type: ignore[operator]
    assert len(delays) > 1


@pytest.mark.parametrize(
    "error",
    [
        ServiceTitanServerError(status=500),
        ServiceUnavailableError(status=503),
        MalformedResponseError(status=200),
        ServiceTitanTimeoutError("request timed out"),
        ServiceTitanConnectionError("connection failed"),
        TokenRefreshError(status=503),
        RetryExhaustedError(3, ServiceTitanServerError(status=502)),
        RetryExhaustedError(3, requests.ConnectionError("reset")),
    ],
    ids=lambda error: type(error).__name__,
)
def test_other_retryable_errors_get_airflows_own_backoff(error):
    assert decide(error) == RetryDecision.default()


@pytest.mark.parametrize(
    "error",
    [ValueError("bug"), KeyError("id"), requests.ConnectionError("reset"), TimeoutError(), RuntimeError("x")],
    ids=lambda error: type(error).__name__,
)
def test_exceptions_that_are_not_ours_get_airflows_own_behaviour(error):
    assert decide(error) == RetryDecision.default()


@pytest.mark.parametrize(
    "changes",
    [
        {"min_delay": timedelta(seconds=-1)},
        {"probe_jitter": timedelta(seconds=-0.5)},
        {"min_delay": 30},
        {"probe_jitter": None},
    ],
)
def test_invalid_settings_are_refused(changes):
    name = next(iter(changes))
    with pytest.raises(ValueError, match=f"{name} must be a timedelta >= 0"):
        ServiceTitanRetryPolicy(**changes)


def test_serialize_round_trip_through_json():
    policy = ServiceTitanRetryPolicy(min_delay=timedelta(seconds=45), probe_jitter=timedelta(seconds=2.5))

    data = json.loads(json.dumps(policy.serialize()))

    assert data == {
        "__type": "airflow_provider_servicetitan.task_retry.ServiceTitanRetryPolicy",
        "min_delay": 45.0,
        "probe_jitter": 2.5,
    }
    assert ServiceTitanRetryPolicy.deserialize(data) == policy
    assert ServiceTitanRetryPolicy.deserialize(ServiceTitanRetryPolicy().serialize()) == ServiceTitanRetryPolicy()


def test_deserialize_refuses_another_policy():
    with pytest.raises(ValueError, match="not a serialized ServiceTitanRetryPolicy"):
        ServiceTitanRetryPolicy.deserialize({"__type": "ExceptionRetryPolicy", "rules": [], "default": "default"})


def build_dag(policy: ServiceTitanRetryPolicy) -> DAG:
    """The shapes the provider's DAG uses: a policy on a task, on a mapped task, and in default_args."""
    with DAG(
        "servicetitan_retry_policy",
        schedule=None,
        default_args={"retries": 3, "retry_delay": timedelta(minutes=1), "retry_policy": policy},
    ) as dag:

        @task(retry_policy=policy)
        def credentials() -> list[str]:
            return ["servicetitan_acme"]

        synced = EmptyOperator.partial(task_id="sync", retry_policy=policy).expand(doc=credentials())
        synced >> EmptyOperator(task_id="report")
    return dag


def test_a_dag_using_the_policy_survives_airflow_serialization():
    payload = json.dumps(DagSerialization.to_dict(build_dag(ServiceTitanRetryPolicy())))
    restored = DagSerialization.from_dict(json.loads(payload))

    assert {t.task_id: t.has_retry_policy for t in restored.tasks} == {
        "credentials": True,
        "sync": True,
        "report": True,  # from default_args
    }
    # Airflow 3.3 stores only a has_retry_policy flag; the worker gets the live policy by parsing
    # the DAG file. So the serialized DAG does not depend on the policy object: a new instance on
    # every parse (or other settings) gives the same DAG version.
    other = DagSerialization.to_dict(build_dag(ServiceTitanRetryPolicy(min_delay=timedelta(minutes=5))))
    assert json.dumps(other) == payload
    assert "ServiceTitanRetryPolicy" not in payload


@pytest.mark.parametrize(
    ("try_number", "max_tries", "retries", "cleared"),
    [
        (1, 3, 3, False),  # the first try of a run
        (2, 3, 3, False),  # Airflow's own retry
        (4, 3, 3, False),  # its last retry
        (5, 7, 3, True),  # after 4 tries a person cleared it: max_tries = 4 + retries
        (6, 7, 3, False),  # ...and Airflow retried that one
        (2, 1, 0, True),  # no retries: any try after the first is a Clear
        (3, 5, 3, True),  # a deferred try 2, cleared while it waited
    ],
)
def test_a_try_started_by_clear_is_told_from_a_retry(try_number, max_tries, retries, cleared):
    assert started_by_clear(try_number, max_tries, retries) is cleared
