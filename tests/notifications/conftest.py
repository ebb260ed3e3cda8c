"""Fixtures of the alert tests: real webhook and SMTP receivers and Redis, reached through real
Airflow connections (``AIRFLOW_CONN_*`` environment variables, inherited by spawned workers)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier
from tests.helpers import set_connection

from .servers import SmtpReceiver, WebhookReceiver

WEBHOOK_CONN_ID = "st_alert_webhook"
SMTP_CONN_ID = "st_alert_smtp"
LOG_URL = "http://airflow.example/dags/servicetitan_sync/runs/manual__1/tasks/sync/mapped/0?try_number=4"
RUN_STARTED = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
# The notifiers' clock: failures happen 16 minutes after the DAG run started.
FAILED_AT = RUN_STARTED + timedelta(minutes=16)


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        set_connection(monkeypatch, WEBHOOK_CONN_ID, conn_type="http", host="127.0.0.1", port=receiver.port)
        yield receiver


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as receiver:
        set_connection(
            monkeypatch,
            SMTP_CONN_ID,
            conn_type="smtp",
            host="127.0.0.1",
            port=receiver.port,
            extra={"disable_ssl": True, "disable_tls": True, "from_email": "airflow@example.com", "retry_limit": 0},
        )
        yield receiver


@pytest.fixture
def make_notifier(
    webhook: WebhookReceiver, redis_connection: str, key_prefix: str
) -> Callable[..., ServiceTitanAlertNotifier]:
    """A notifier posting to the test webhook, deduplicating in the test's Redis namespace."""

    def make(**kwargs: Any) -> ServiceTitanAlertNotifier:
        settings: dict[str, Any] = {
            "webhook_conn_id": WEBHOOK_CONN_ID,
            "redis_conn_id": redis_connection,
            "namespace": key_prefix,
            "clock": lambda: FAILED_AT,
            **kwargs,
        }
        return ServiceTitanAlertNotifier(**settings)

    return make


@dataclass
class TaskInstance:
    """What a failure callback reads from Airflow's ``ti``."""

    dag_id: str = "servicetitan_sync"
    task_id: str = "sync"
    run_id: str = "manual__1"
    map_index: int = 0
    try_number: int = 4
    max_tries: int = 3
    log_url: str = LOG_URL


@dataclass
class DagRun:
    """What a failure callback reads from Airflow's ``dag_run``."""

    start_date: datetime | None = field(default=RUN_STARTED)


@dataclass
class Task:
    """What a failure callback reads from Airflow's ``task``: a sync task's credential."""

    servicetitan_conn_id: str | None = "servicetitan_acme"
    task_id: str = "sync"


def failure_context(
    exception: BaseException, *, task: object | None = None, ti: object | None = None, dag_run: object | None = None
) -> dict[str, Any]:
    """The context Airflow passes to ``on_failure_callback``, reduced to what the notifier reads."""
    return {
        "exception": exception,
        "ti": ti or TaskInstance(),
        "task": task or Task(),
        "dag_run": dag_run or DagRun(),
        "run_id": "manual__1",
    }
