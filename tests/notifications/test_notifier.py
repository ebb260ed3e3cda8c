"""The notifier end to end: a failure callback or ``send`` -> real Redis -> a real webhook / SMTP."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_servicetitan.errors import (
    CircuitBreakerOpenError,
    InvalidCredentialsError,
    RetryExhaustedError,
    ServiceTitanServerError,
    ServiceTitanTimeoutError,
)
from airflow_provider_servicetitan.notifications import (
    AlertKind,
    ServiceTitanAlertNotifier,
    alert_from_exception,
    dead_letter_alert,
    resolved_alert,
)
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker
from airflow_provider_servicetitan.sync.credential import RESOLVED_BY_A_CLEAN_SYNC
from tests.helpers import set_connection

from .conftest import (
    FAILED_AT,
    LOG_URL,
    SMTP_CONN_ID,
    WEBHOOK_CONN_ID,
    DagRun,
    Task,
    TaskInstance,
    failure_context,
)
from .servers import closed_port

NOTIFIER_LOGGER = "airflow_provider_servicetitan.notifications.notifier"
CRED = "servicetitan_acme"


def exhausted(
    trace_id: str = "trace-abc", error_class: type[Exception] = ServiceTitanServerError
) -> RetryExhaustedError:
    if error_class is ServiceTitanServerError:
        last: Exception = ServiceTitanServerError(status=500, title="Internal Server Error", trace_id=trace_id)
    else:
        last = error_class("timed out")
    return RetryExhaustedError(5, last)


def test_a_failure_callback_sends_one_alert_with_everything_a_person_needs(make_notifier, webhook) -> None:
    notifier = make_notifier()

    notifier(failure_context(exhausted("trace-abc")))

    [body] = webhook.bodies
    text = body["text"]
    for expected in (
        CRED,
        "Retries exhausted",
        "ServiceTitanServerError",
        "traceId trace-abc",
        "*What happened:* Gave up on ServiceTitan after 4 Airflow task tries (try 4 of 4; the DAG run started "
        "16 min ago). The last try's calls gave up after 5 attempts; the last error was ServiceTitanServerError",
        "*What the system did:* Retried the calls with exponential backoff and jitter in each of the 4 task tries",
        "*What to do:* Check ServiceTitan's status",
        LOG_URL,
        "dag_id=servicetitan_sync, task_id=sync, run_id=manual__1, map_index=0, try_number=4",
    ):
        assert expected in text
    assert [block["type"] for block in body["blocks"]] == ["header", "section"]


@pytest.mark.parametrize(
    ("ti", "dag_run", "told"),
    [
        (
            TaskInstance(try_number=2, max_tries=5),
            DagRun(FAILED_AT - timedelta(seconds=45)),
            "after 2 Airflow task tries (try 2 of 6; the DAG run started 45 s ago).",
        ),
        (
            TaskInstance(try_number=1, max_tries=0),
            DagRun(None),
            "after 1 Airflow task try (try 1 of 1). The last try's calls gave up after 5 attempts",
        ),
        (Task(), DagRun(), "Gave up on ServiceTitan: the calls gave up after 5 attempts;"),
    ],
    ids=["retried", "run-without-start", "no-try-number"],
)
def test_the_task_tries_come_from_the_callback_context(make_notifier, webhook, ti, dag_run, told) -> None:
    make_notifier()(failure_context(exhausted(), ti=ti, dag_run=dag_run))

    [text] = webhook.texts
    assert told in text


def test_the_alert_is_logged_at_error(make_notifier, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=NOTIFIER_LOGGER):
        make_notifier()(failure_context(exhausted()))

    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith(f"[ServiceTitan] Retries exhausted: {CRED}\nWhat happened:")


def test_failing_tasks_of_one_incident_alert_once_across_notifiers(make_notifier, webhook) -> None:
    for _ in range(3):
        notifier = make_notifier()
        notifier(failure_context(exhausted(trace_id="a-new-trace-each-time")))
        notifier(failure_context(exhausted(trace_id="another-trace")))

    assert len(webhook.bodies) == 1


def test_different_incidents_alert_separately(make_notifier, webhook) -> None:
    notifier = make_notifier()

    notifier(failure_context(exhausted()))
    notifier(failure_context(exhausted(error_class=ServiceTitanTimeoutError)))
    notifier(failure_context(exhausted(), task=Task(servicetitan_conn_id="servicetitan_other")))
    notifier(failure_context(InvalidCredentialsError(status=401, title="invalid_client")))

    assert len(webhook.bodies) == 4
    assert "ServiceTitanTimeoutError" in webhook.texts[1]
    assert "servicetitan_other" in webhook.texts[2]
    assert "Credential needs attention" in webhook.texts[3]


def test_a_rejected_credential_behind_an_airflow_exception_alerts(make_notifier, webhook) -> None:
    try:
        try:
            raise InvalidCredentialsError(status=401, title="invalid_client", trace_id="trace-401")
        except InvalidCredentialsError:
            raise AirflowFailException(f"{CRED} needs attention")  # noqa: B904 - as the sync operator does
    except AirflowFailException as failed:
        make_notifier()(failure_context(failed))

    [text] = webhook.texts
    assert "Credential needs attention" in text
    assert "traceId trace-401" in text


@pytest.mark.parametrize(
    "exception",
    [CircuitBreakerOpenError("tenant-1", 30), ValueError("not ours"), AirflowFailException("no cause")],
    ids=["open-breaker-refusal", "foreign", "airflow-only"],
)
def test_failures_that_are_not_incidents_send_nothing(make_notifier, webhook, exception) -> None:
    make_notifier()(failure_context(exception))

    assert webhook.bodies == []


def test_no_exception_in_the_context_sends_nothing(make_notifier, webhook) -> None:
    make_notifier()({"ti": TaskInstance(), "task": Task(), "exception": "a message, not an exception"})

    assert webhook.bodies == []


def test_the_credential_comes_from_the_notifier_the_task_or_its_op_kwargs(make_notifier, webhook) -> None:
    class PythonTask:
        def __init__(self) -> None:
            self.op_kwargs = {"servicetitan_conn_id": "from_op_kwargs"}

    make_notifier(credential="from_notifier")(failure_context(exhausted()))
    make_notifier()(failure_context(exhausted(), task=PythonTask()))
    make_notifier()(failure_context(exhausted(), task=Task(servicetitan_conn_id=None)))

    assert [text.split("\n", 1)[0] for text in webhook.texts] == [
        "*[ServiceTitan] Retries exhausted: from_notifier*",
        "*[ServiceTitan] Retries exhausted: from_op_kwargs*",
        "*[ServiceTitan] Retries exhausted: servicetitan_sync.sync*",
    ]


def test_resolved_is_sent_only_for_a_credential_that_alerted(make_notifier, webhook) -> None:
    notifier = make_notifier()

    assert not notifier.send(resolved_alert(CRED))
    assert notifier.send(alert_from_exception(exhausted(), credential=CRED))
    assert make_notifier().send(resolved_alert(CRED))
    assert not notifier.send(resolved_alert(CRED))

    assert len(webhook.bodies) == 2
    assert "Resolved: servicetitan_acme" in webhook.texts[1]
    assert "closed=retries_exhausted" in webhook.texts[1]
    assert notifier.send(alert_from_exception(exhausted(), credential=CRED)), "a new failure alerts again"


def test_resolved_of_one_kind_leaves_the_others_open(make_notifier, webhook) -> None:
    notifier = make_notifier()
    notifier.send(alert_from_exception(exhausted(), credential=CRED))
    notifier.send(dead_letter_alert(CRED, 80, 50))

    assert not notifier.send(resolved_alert(CRED, AlertKind.CIRCUIT_OPENED))
    assert notifier.send(resolved_alert(CRED, AlertKind.DEAD_LETTERS_OVER_THRESHOLD))

    assert notifier.dedup.open_incidents(CRED) == ["retries_exhausted"]
    assert len(webhook.bodies) == 3


def test_one_recovery_sends_one_resolved_naming_every_open_kind(make_notifier, webhook) -> None:
    notifier = make_notifier()
    notifier.send(alert_from_exception(exhausted(), credential=CRED))
    notifier.send(alert_from_exception(InvalidCredentialsError(status=401, title="invalid_client"), credential=CRED))
    notifier.send(dead_letter_alert(CRED, 80, 50))
    breaker = CircuitBreaker("tenant-1234", None, BreakerConfig(failure_threshold=1))
    breaker.add_listener(notifier.transition_listener(CRED))
    with pytest.raises(ServiceTitanServerError):
        breaker.call(raise_server_error)
    before = len(webhook.bodies)

    assert make_notifier().resolve(CRED, RESOLVED_BY_A_CLEAN_SYNC, tenant_id=1234)
    assert not notifier.resolve(CRED, RESOLVED_BY_A_CLEAN_SYNC, tenant_id=1234)

    [text] = webhook.texts[before:]
    assert text.split("\n", 1)[0] == f"*[ServiceTitan] Resolved: {CRED} (tenant 1234)*"
    assert (
        f"*What happened:* {CRED} works again. Closed its open incidents: Circuit breaker opened, "
        "Credential needs attention, Retries exhausted." in text
    )
    assert notifier.dedup.open_incidents(CRED) == ["dead_letters_over_threshold"]
    assert notifier.send(alert_from_exception(exhausted(), credential=CRED)), "a new failure alerts again"


def test_resolve_sends_nothing_when_none_of_the_kinds_is_open(make_notifier, webhook) -> None:
    notifier = make_notifier()
    notifier.send(dead_letter_alert(CRED, 80, 50))

    assert not notifier.resolve(CRED, RESOLVED_BY_A_CLEAN_SYNC)
    assert not notifier.resolve(CRED, [])
    assert not notifier.resolve("servicetitan_never_alerted", RESOLVED_BY_A_CLEAN_SYNC)

    assert len(webhook.bodies) == 1
    assert notifier.dedup.open_incidents(CRED) == ["dead_letters_over_threshold"]


def test_resolve_of_an_unknown_kind_is_logged_and_never_raises(make_notifier, webhook, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger=NOTIFIER_LOGGER):
        assert not make_notifier().resolve(CRED, ["no_such_kind"])

    assert webhook.bodies == []
    assert "could not resolve the ServiceTitan incidents of servicetitan_acme" in caplog.text


def test_a_breaker_that_opens_alerts_once_for_every_worker(make_notifier, webhook, redis_client, key_prefix) -> None:
    config = BreakerConfig(failure_threshold=1)
    for _ in range(2):  # two workers' breakers, each seeing the shared breaker open
        breaker = CircuitBreaker("tenant-1234", redis_client, config, namespace=key_prefix)
        breaker.add_listener(make_notifier().transition_listener(CRED, tenant_id="1234"))
        breaker.reset()
        with pytest.raises(ServiceTitanServerError):
            breaker.call(raise_server_error)

    [text] = webhook.texts
    assert text.split("\n", 1)[0] == "*[ServiceTitan] Circuit breaker opened: servicetitan_acme (tenant 1234)*"
    assert "*Circuit breaker:* open" in text


def raise_server_error() -> None:
    raise ServiceTitanServerError(status=500, title="Internal Server Error")


def test_unreachable_redis_still_alerts_and_warns_once(monkeypatch, make_notifier, webhook, caplog) -> None:
    set_connection(monkeypatch, "st_dead_redis", conn_type="redis", host="127.0.0.1", port=closed_port())
    notifier = make_notifier(redis_conn_id="st_dead_redis")

    with caplog.at_level(logging.WARNING):
        assert notifier.send(alert_from_exception(exhausted(), credential=CRED))
        assert notifier.send(alert_from_exception(exhausted(), credential="servicetitan_other"))
        assert not notifier.send(alert_from_exception(exhausted(), credential=CRED)), "deduplicated in process"

    assert len(webhook.bodies) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "Redis" in r.getMessage()]
    assert len(warnings) == 1


def test_a_missing_redis_connection_still_alerts(make_notifier, webhook, caplog) -> None:
    notifier = make_notifier(redis_conn_id="st_no_such_connection")

    with caplog.at_level(logging.WARNING, logger=NOTIFIER_LOGGER):
        assert notifier.send(alert_from_exception(exhausted(), credential=CRED))

    assert len(webhook.bodies) == 1
    assert "st_no_such_connection" in caplog.records[0].getMessage()


def test_a_webhook_that_is_down_is_logged_and_never_raises(monkeypatch, make_notifier, caplog) -> None:
    set_connection(monkeypatch, "st_down_webhook", conn_type="http", host="127.0.0.1", port=closed_port())
    notifier = make_notifier(webhook_conn_id="st_down_webhook", webhook_endpoint="/services/T0/B0/secret-path")

    with caplog.at_level(logging.ERROR, logger=NOTIFIER_LOGGER):
        notifier(failure_context(exhausted()))

    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failures == [
        f"ServiceTitan alert 'Retries exhausted: {CRED}': webhook 'st_down_webhook' failed: ConnectionError"
    ]


def test_an_undelivered_alert_is_tried_again_by_the_next_failure(make_notifier, webhook) -> None:
    notifier = make_notifier()
    webhook.status = 500

    assert notifier.send(alert_from_exception(exhausted(), credential=CRED))
    webhook.status = 200
    assert notifier.send(alert_from_exception(exhausted(), credential=CRED))
    assert not notifier.send(alert_from_exception(exhausted(), credential=CRED))

    assert len(webhook.bodies) == 2


def test_the_endpoint_is_joined_to_the_connection(make_notifier, webhook) -> None:
    make_notifier(webhook_endpoint="services/T0/B0/xyz").send(dead_letter_alert(CRED, 80, 50))

    assert webhook.paths == ["/services/T0/B0/xyz"]


def test_email_goes_through_the_smtp_connection(make_notifier, webhook, smtp) -> None:
    notifier = make_notifier(email_to=["ops@example.com", "oncall@example.com"], smtp_conn_id=SMTP_CONN_ID)

    notifier(failure_context(exhausted("trace-mail")))

    [message] = smtp.messages
    assert message["Subject"] == f"[ServiceTitan] Retries exhausted: {CRED}"
    assert message["From"] == "airflow@example.com"
    assert smtp.recipients == [["ops@example.com", "oncall@example.com"]]
    html = next(part for part in message.walk() if part.get_content_type() == "text/html")
    body = html.get_payload(decode=True).decode()
    assert "traceId trace-mail" in body
    assert LOG_URL in body
    assert len(webhook.bodies) == 1, "the other channels deliver too"


def test_email_failure_does_not_stop_the_webhook(make_notifier, webhook, caplog) -> None:
    notifier = make_notifier(email_to="ops@example.com", smtp_conn_id="st_no_such_smtp")

    with caplog.at_level(logging.ERROR, logger=NOTIFIER_LOGGER):
        assert notifier.send(alert_from_exception(exhausted(), credential=CRED))

    assert len(webhook.bodies) == 1
    assert any("email via 'st_no_such_smtp' failed" in r.getMessage() for r in caplog.records)


def test_the_notifier_without_redis_or_channels_only_logs(caplog) -> None:
    notifier = ServiceTitanAlertNotifier(redis_conn_id=None)

    with caplog.at_level(logging.ERROR, logger=NOTIFIER_LOGGER):
        assert notifier.send(alert_from_exception(exhausted(), credential=CRED))
        assert not notifier.send(alert_from_exception(exhausted(), credential=CRED))

    assert len(caplog.records) == 1
    assert notifier.channels == []


def test_the_connections_are_templated(make_notifier, webhook) -> None:
    notifier = make_notifier(webhook_conn_id="{{ params.alert_conn }}")
    context = failure_context(exhausted())
    context["params"] = {"alert_conn": WEBHOOK_CONN_ID}

    notifier(context)

    assert len(webhook.bodies) == 1
