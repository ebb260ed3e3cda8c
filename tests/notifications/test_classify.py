"""Which failures and breaker transitions call a person, and what the alert tells them."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_provider_servicetitan.errors import (
    CircuitBreakerOpenError,
    CredentialValidationError,
    InvalidCredentialsError,
    PermissionDeniedError,
    RateLimitExceededError,
    RetryExhaustedError,
    ServiceTitanConnectionError,
    ServiceTitanServerError,
    ServiceTitanTimeoutError,
)
from airflow_provider_servicetitan.notifications import (
    AlertKind,
    TaskTries,
    alert_from_exception,
    alert_from_transition,
    dead_letter_alert,
    resolved_alert,
)
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, BreakerTransition, CircuitBreaker
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from tests.helpers import credentials_for

CRED = "servicetitan_acme"


def server_error(trace_id: str = "trace-500") -> ServiceTitanServerError:
    return ServiceTitanServerError(status=500, title="Internal Server Error", trace_id=trace_id, path="/crm/v2/x")


def fail_with_server_error() -> None:
    raise server_error()


def raised_while_handling(cause: BaseException, raise_instead: BaseException) -> BaseException:
    """What an operator raises when it turns ``cause`` into an Airflow outcome."""
    try:
        try:
            raise cause
        except type(cause):
            raise raise_instead  # noqa: B904 - the operators raise without `from`: the context is enough
    except BaseException as raised:
        return raised


def test_rejected_credential_needs_attention() -> None:
    error = InvalidCredentialsError(status=401, title="invalid_client", trace_id="trace-401", path="/connect/token")

    alert = alert_from_exception(error, credential=CRED, tenant_id="1234", log_url="http://log")

    assert alert is not None
    assert alert.kind is AlertKind.NEEDS_ATTENTION
    assert (alert.credential, alert.tenant_id, alert.log_url) == (CRED, "1234", "http://log")
    assert (alert.error_class, alert.trace_id) == ("InvalidCredentialsError", "trace-401")
    assert "client id, client secret or app key" in alert.human_action
    assert CRED in alert.human_action
    assert "not locked out" in alert.system_action
    assert alert.incident_key == f"{CRED}|needs_attention|InvalidCredentialsError"


def test_rejected_credential_is_found_behind_the_operators_fail_exception() -> None:
    error = raised_while_handling(
        InvalidCredentialsError(status=401, title="invalid_client"), AirflowFailException(f"{CRED} needs attention")
    )

    alert = alert_from_exception(error, credential=CRED)

    assert alert is not None
    assert alert.kind is AlertKind.NEEDS_ATTENTION
    assert alert.error_class == "InvalidCredentialsError"


def test_misconfigured_connection_names_the_field_to_fix() -> None:
    error = CredentialValidationError("app_key", "the application key (ST-App-Key)", conn_id=CRED)

    alert = alert_from_exception(error, credential=CRED)

    assert alert is not None
    assert alert.kind is AlertKind.NEEDS_ATTENTION
    assert "'app_key'" in alert.human_action
    assert "the application key (ST-App-Key)" in alert.human_action
    assert alert.incident_key == f"{CRED}|needs_attention|CredentialValidationError:app_key"
    other_field = alert_from_exception(CredentialValidationError("tenant_id", "digits"), credential=CRED)
    assert other_field is not None
    assert other_field.incident_key != alert.incident_key


def test_permission_denied_needs_attention() -> None:
    error = PermissionDeniedError(status=403, title="Forbidden", trace_id="trace-403", path="/payroll/v2/x")

    alert = alert_from_exception(error, credential=CRED)

    assert alert is not None
    assert alert.kind is AlertKind.NEEDS_ATTENTION
    assert alert.trace_id == "trace-403"
    assert "licensed" in alert.human_action


def test_exhausted_retries_name_the_last_error_and_its_trace_id() -> None:
    error = RetryExhaustedError(5, server_error("trace-abc"))

    alert = alert_from_exception(error, credential=CRED)

    assert alert is not None
    assert alert.kind is AlertKind.RETRIES_EXHAUSTED
    assert (alert.error_class, alert.trace_id, alert.breaker_state) == ("ServiceTitanServerError", "trace-abc", None)
    assert alert.summary.startswith("Gave up on ServiceTitan: the calls gave up after 5 attempts; the last error")
    assert "checkpoint" in alert.system_action
    assert "traceId" in alert.human_action
    assert alert.details == {"call_attempts": 5}
    assert alert.incident_key == f"{CRED}|retries_exhausted|ServiceTitanServerError"


STARTED = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


def test_exhausted_retries_count_the_airflow_task_tries_and_the_time_since_the_run_started() -> None:
    tries = TaskTries(try_number=4, max_tries=3, run_started_at=STARTED, failed_at=STARTED + timedelta(minutes=16))

    alert = alert_from_exception(RetryExhaustedError(2, server_error()), credential=CRED, task_tries=tries)

    assert alert is not None
    assert alert.summary.startswith(
        "Gave up on ServiceTitan after 4 Airflow task tries (try 4 of 4; the DAG run started 16 min ago). "
        "The last try's calls gave up after 2 attempts; the last error was ServiceTitanServerError"
    )
    assert alert.system_action.startswith(
        "Retried the calls with exponential backoff and jitter in each of the 4 task tries;"
    )
    assert "Tried" not in alert.summary + alert.system_action
    assert alert.details == {"call_attempts": 2}


def test_a_task_without_retries_says_it_had_one_try() -> None:
    alert = alert_from_exception(RetryExhaustedError(5, server_error()), credential=CRED, task_tries=TaskTries(1, 0))

    assert alert is not None
    assert alert.summary.startswith("Gave up on ServiceTitan after 1 Airflow task try (try 1 of 1). The last try's")
    assert alert.system_action.startswith("Retried the calls with exponential backoff and jitter in its only task try;")


def test_an_open_breaker_in_the_last_try_is_told_after_the_task_tries() -> None:
    tries = TaskTries(try_number=2, max_tries=3)
    error = RetryExhaustedError(3, CircuitBreakerOpenError("tenant-1234-abcd", retry_after=42.0))

    alert = alert_from_exception(error, credential=CRED, task_tries=tries)

    assert alert is not None
    assert alert.summary.startswith(
        "Gave up on ServiceTitan after 2 Airflow task tries (try 2 of 4). The last try's calls gave up after "
        "3 attempts: the circuit breaker 'tenant-1234-abcd' is open"
    )


@pytest.mark.parametrize(
    ("tries", "told"),
    [
        (TaskTries(try_number=1), "1 Airflow task try"),
        (TaskTries(try_number=1, max_tries=0), "1 Airflow task try (try 1 of 1)"),
        (
            TaskTries(try_number=8, max_tries=7, run_started_at=STARTED, failed_at=STARTED + timedelta(seconds=45)),
            "8 Airflow task tries (try 8 of 8; the DAG run started 45 s ago)",
        ),
        (
            TaskTries(try_number=3, run_started_at=STARTED, failed_at=STARTED + timedelta(hours=2, minutes=5)),
            "3 Airflow task tries (the DAG run started 2 h 5 min ago)",
        ),
        (
            TaskTries(try_number=3, run_started_at=STARTED, failed_at=STARTED + timedelta(days=1, hours=3)),
            "3 Airflow task tries (the DAG run started 1 d 3 h ago)",
        ),
        (
            TaskTries(try_number=2, run_started_at=STARTED, failed_at=STARTED - timedelta(seconds=3)),
            "2 Airflow task tries (the DAG run started 0 s ago)",
        ),
        (TaskTries(try_number=2, run_started_at=STARTED), "2 Airflow task tries"),
    ],
    ids=["alone", "no-retries", "seconds", "hours", "days", "clock-behind", "no-failure-time"],
)
def test_task_tries_are_told_as_far_as_they_are_known(tries: TaskTries, told: str) -> None:
    assert tries.describe() == told


def test_exhausted_retries_against_an_open_breaker_say_so() -> None:
    error = RetryExhaustedError(3, CircuitBreakerOpenError("tenant-1234-abcd", retry_after=42.0))

    alert = alert_from_exception(error, credential=CRED)

    assert alert is not None
    assert alert.kind is AlertKind.RETRIES_EXHAUSTED
    assert alert.breaker_state == "open"
    assert alert.error_class == "CircuitBreakerOpenError"
    assert "circuit breaker 'tenant-1234-abcd' is open" in alert.summary
    assert "42s" in alert.summary


@pytest.mark.parametrize(
    ("last_error", "advice"),
    [
        (RateLimitExceededError(status=429, retry_after=30), "quota"),
        (ServiceTitanTimeoutError("request timed out"), "network"),
        (ServiceTitanConnectionError("connection failed"), "network"),
        (ValueError("a bug"), "task log"),
    ],
)
def test_advice_depends_on_the_last_error(last_error: Exception, advice: str) -> None:
    alert = alert_from_exception(RetryExhaustedError(4, last_error), credential=CRED)

    assert alert is not None
    assert advice in alert.human_action
    assert alert.error_class == type(last_error).__name__


def test_different_last_errors_are_different_incidents() -> None:
    first = alert_from_exception(RetryExhaustedError(5, server_error()), credential=CRED)
    second = alert_from_exception(RetryExhaustedError(5, ServiceTitanTimeoutError("slow")), credential=CRED)
    same = alert_from_exception(RetryExhaustedError(2, server_error("another-trace")), credential=CRED)

    assert first is not None
    assert second is not None
    assert same is not None
    assert first.incident_key != second.incident_key
    assert first.incident_key == same.incident_key


@pytest.mark.parametrize(
    "exception",
    [
        CircuitBreakerOpenError("tenant-1234-abcd", retry_after=10),
        ValueError("not ours"),
        AirflowSkipException("skipped"),
        server_error(),
    ],
    ids=["open-breaker-refusal", "foreign", "skip", "unwrapped-retryable"],
)
def test_other_exceptions_are_not_alerts(exception: BaseException) -> None:
    assert alert_from_exception(exception, credential=CRED) is None


def test_a_breaker_that_opens_alerts_and_other_transitions_do_not() -> None:
    seen: list[BreakerTransition] = []
    breaker = CircuitBreaker("tenant-1234-abcd", None, BreakerConfig(failure_threshold=2), listeners=[seen.append])
    for _ in range(2):
        with pytest.raises(ServiceTitanServerError):
            breaker.call(fail_with_server_error)
    breaker.reset()

    opened, closed = seen
    alert = alert_from_transition(opened, credential=CRED, tenant_id="1234")

    assert alert is not None
    assert alert.kind is AlertKind.CIRCUIT_OPENED
    assert (alert.breaker_state, alert.tenant_id) == ("open", "1234")
    assert "too many failed calls" in alert.summary
    assert "(30s)" in alert.system_action
    assert alert.incident_key == f"{CRED}|circuit_opened|tenant-1234-abcd"
    assert alert.details == {"breaker": "tenant-1234-abcd", "reason": "failure_threshold"}
    assert alert_from_transition(closed, credential=CRED) is None
    half_open = dataclasses.replace(opened, from_state=opened.to_state, to_state="half_open", open_until=None)
    assert alert_from_transition(half_open, credential=CRED) is None


def test_dead_letter_alert_counts_and_points_to_the_table() -> None:
    alert = dead_letter_alert(CRED, 75, 50, tenant_id="1234")

    assert alert.kind is AlertKind.DEAD_LETTERS_OVER_THRESHOLD
    assert "75 records" in alert.summary
    assert "servicetitan_dead_letters" in alert.human_action
    assert alert.details == {"dead_letters": 75, "threshold": 50}
    assert alert.incident_key == dead_letter_alert(CRED, 90, 50).incident_key


def test_resolved_alert_names_what_it_resolves() -> None:
    everything = resolved_alert(CRED)
    one_kind = resolved_alert(CRED, "retries_exhausted")
    two_kinds = resolved_alert(CRED, [AlertKind.CIRCUIT_OPENED, "retries_exhausted", "circuit_opened"])

    assert everything.kind is one_kind.kind is two_kinds.kind is AlertKind.RESOLVED
    assert everything.resolves is None
    assert one_kind.resolves == (AlertKind.RETRIES_EXHAUSTED,)
    assert two_kinds.resolves == (AlertKind.CIRCUIT_OPENED, AlertKind.RETRIES_EXHAUSTED)
    assert len({everything.incident_key, one_kind.incident_key, two_kinds.incident_key}) == 3
    with pytest.raises(ValueError, match="resolved"):
        resolved_alert(CRED, "resolved")
    with pytest.raises(ValueError, match="None for all"):
        resolved_alert(CRED, [])


def test_alerts_from_real_failures_hold_no_secret(start_sandbox, make_client) -> None:
    sandbox = start_sandbox(fault_overrides={"error_rate": 1.0})
    good = credentials_for(sandbox)
    bad = dataclasses.replace(good, client_secret="not-the-real-secret-123")
    fast = RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.002)
    alerts = []
    for credentials in (bad, good):
        client = make_client(credentials, shared=None, retry_policy=fast)
        with pytest.raises((InvalidCredentialsError, RetryExhaustedError)) as caught:
            client.request("GET", f"/crm/v2/tenant/{client.tenant_id}/customers", params={"pageSize": 1})
        alerts.append(alert_from_exception(caught.value, credential=CRED))

    rejected, exhausted = alerts
    assert rejected is not None
    assert rejected.kind is AlertKind.NEEDS_ATTENTION
    assert exhausted is not None
    assert exhausted.kind is AlertKind.RETRIES_EXHAUSTED
    assert exhausted.error_class == "ServiceTitanServerError"
    assert exhausted.trace_id
    for alert in alerts:
        rendered = json.dumps(alert.as_dict()) + json.dumps(alert.as_slack_payload())
        for secret in (bad.client_secret, good.client_secret, good.app_key):
            assert secret not in rendered
