"""The Airflow notifier: a failed task or a breaker that opens becomes one alert per incident.

Context -> classify (:mod:`.classify`) -> dispatch (:mod:`.dispatch`: deduplication, channels,
all-clears); this module only reads Airflow's context and connections.

Use it as ``on_failure_callback`` (not ``on_retry_callback``: a retry is not an incident yet), and
call :meth:`ServiceTitanAlertNotifier.send` from code that detects incidents itself (the breaker
listener, the report task), and :meth:`ServiceTitanAlertNotifier.resolve` when a credential works
again. Every alert goes to the task log; a webhook and email are optional.
A failing channel, Redis or a bug here never fails the task or the callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeGuard

import redis
from airflow.sdk import BaseNotifier

from airflow_provider_servicetitan.hooks import settings
from airflow_provider_servicetitan.notifications.alerts import Alert, AlertKind, DetailValue
from airflow_provider_servicetitan.notifications.channels import (
    AlertChannel,
    EmailChannel,
    WebhookChannel,
    describe_failure,
)
from airflow_provider_servicetitan.notifications.classify import (
    TaskTries,
    alert_from_exception,
    alert_from_transition,
    find_servicetitan_error,
    resolved_alert,
)
from airflow_provider_servicetitan.notifications.dedup import AlertDeduplicator
from airflow_provider_servicetitan.notifications.dispatch import dispatch
from airflow_provider_servicetitan.resilience.breaker import BreakerTransition
from airflow_provider_servicetitan.resilience.keys import require_key_part

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["ServiceTitanAlertNotifier"]

logger = logging.getLogger(__name__)


class ServiceTitanAlertNotifier(BaseNotifier):
    """Send ServiceTitan alerts to the log, a webhook and email, once per incident.

    :param webhook_conn_id: Airflow HTTP connection of a Slack-compatible incoming webhook (its
        host may be the whole webhook URL); ``None``: no webhook.
    :param webhook_endpoint: path after the connection's base URL, if the host does not hold it.
    :param email_to: recipient(s) of alert emails; ``None``: no email.
    :param smtp_conn_id: Airflow SMTP connection for email.
    :param email_from: sender address; default the SMTP connection's ``from_email``.
    :param redis_conn_id: Airflow Redis connection shared by all workers for deduplication;
        ``None`` deduplicates within each process only. Default: ``[servicetitan] redis_conn_id``.
    :param namespace: prefix of the Redis keys. Default: ``[servicetitan] redis_namespace``.
    :param dedup_window_seconds: an incident alerts at most once per window.
    :param credential: the credential a failure callback reports; default the task's
        ``servicetitan_conn_id`` (attribute, or ``op_kwargs`` of a Python task).
    :param webhook_timeout: seconds to wait for the webhook.
    :param clock: the current time (aware), for how long ago a failed task's DAG run started (tests).
    :param kwargs: passed to Airflow's ``BaseNotifier`` (``context``).

    Templated (rendered with the task's context before a failure callback): ``webhook_conn_id``,
    ``webhook_endpoint``, ``email_to``, ``smtp_conn_id``, ``email_from``, ``credential``.
    """

    template_fields: Sequence[str] = (
        "webhook_conn_id",
        "webhook_endpoint",
        "email_to",
        "smtp_conn_id",
        "email_from",
        "credential",
    )

    def __init__(
        self,
        *,
        webhook_conn_id: str | None = None,
        webhook_endpoint: str | None = None,
        email_to: str | list[str] | None = None,
        smtp_conn_id: str = "smtp_default",
        email_from: str | None = None,
        redis_conn_id: str | settings.FromConfig | None = settings.FROM_CONFIG,
        namespace: str | None = None,
        dedup_window_seconds: float = 3600.0,
        credential: str | None = None,
        webhook_timeout: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.webhook_conn_id = webhook_conn_id
        self.webhook_endpoint = webhook_endpoint
        self.email_to = email_to
        self.smtp_conn_id = smtp_conn_id
        self.email_from = email_from
        self.redis_conn_id = redis_conn_id
        self.namespace = namespace
        self.dedup_window_seconds = dedup_window_seconds
        self.credential = credential
        self.webhook_timeout = webhook_timeout
        self.clock = clock

    @cached_property
    def dedup(self) -> AlertDeduplicator:
        """The deduplicator, connected on first use (never when the DAG file is parsed), with the
        ``[servicetitan]`` settings of the process that sends, where not given.

        An invalid namespace is logged and deduplication stays in this process: the alerts of the
        failures it causes must still go out.
        """
        try:
            namespace = settings.redis_namespace(self.namespace)
            require_key_part(namespace, "namespace")
        except ValueError as error:
            logger.error("alert deduplication: %s; deduplicating in this process only", error)
            return AlertDeduplicator(None, window_seconds=self.dedup_window_seconds)
        return AlertDeduplicator(self._redis_client(), namespace=namespace, window_seconds=self.dedup_window_seconds)

    def _redis_client(self) -> redis.Redis | None:
        conn_id = settings.redis_conn_id(self.redis_conn_id)
        if conn_id is None:
            return None
        from airflow_provider_servicetitan.hooks.redis import redis_from_connection

        try:
            return redis_from_connection(conn_id)
        except Exception as error:
            logger.warning(
                "alert deduplication: cannot use the Redis connection %r (%s); deduplicating in this process only",
                conn_id,
                describe_failure(error),
            )
            return None

    @property
    def channels(self) -> list[AlertChannel]:
        """The configured channels besides the log."""
        channels: list[AlertChannel] = []
        if self.webhook_conn_id:
            channels.append(
                WebhookChannel(self.webhook_conn_id, endpoint=self.webhook_endpoint, timeout=self.webhook_timeout)
            )
        if self.email_to:
            channels.append(EmailChannel(self.email_to, smtp_conn_id=self.smtp_conn_id, from_email=self.email_from))
        return channels

    def notify(self, context: Context) -> None:
        """Alert about the failed task of ``context``, if its exception calls a person."""
        try:
            alert = self.alert_from_context(context)
        except Exception:
            logger.exception("could not build a ServiceTitan alert from the task context")
            return
        if alert is not None:
            self.send(alert)

    def alert_from_context(self, context: Context | Mapping[str, Any]) -> Alert | None:
        """The alert for a failure callback's context (``exception``, ``ti``, ``task``, ``dag_run``),
        or ``None``."""
        exception = context.get("exception")
        if not isinstance(exception, BaseException):
            return None
        ti = context.get("ti")
        task = context.get("task")
        alert = alert_from_exception(
            exception,
            credential=self._credential_for(task, ti, exception),
            log_url=_log_url(ti),
            task_tries=self._task_tries(ti, context.get("dag_run")),
        )
        if alert is None:
            logger.info("%s is not an incident for a person: no ServiceTitan alert", type(exception).__name__)
            return None
        return alert.with_details(**_task_details(ti))

    def _task_tries(self, ti: object, dag_run: object) -> TaskTries | None:
        """The Airflow tries of the failed task: ``ti.try_number`` and ``max_tries``, and when its
        DAG run started (``dag_run.start_date``), as of this notifier's clock."""
        try_number = getattr(ti, "try_number", None)
        if not _is_int(try_number):
            return None
        max_tries = getattr(ti, "max_tries", None)
        started = getattr(dag_run, "start_date", None)
        started = started if isinstance(started, datetime) and started.tzinfo is not None else None
        return TaskTries(
            try_number=try_number,
            max_tries=max_tries if _is_int(max_tries) else None,
            run_started_at=started,
            failed_at=self.clock() if started is not None else None,
        )

    def _credential_for(self, task: object, ti: object, exception: BaseException) -> str:
        if self.credential:
            return self.credential
        op_kwargs = getattr(task, "op_kwargs", None)
        candidates = [
            getattr(task, "servicetitan_conn_id", None),
            op_kwargs.get("servicetitan_conn_id") if isinstance(op_kwargs, Mapping) else None,
            getattr(find_servicetitan_error(exception), "conn_id", None),
        ]
        for candidate in candidates:
            if isinstance(candidate, str) and candidate:
                return candidate
        return f"{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}"

    def transition_listener(
        self, credential: str, *, tenant_id: str | None = None
    ) -> Callable[[BreakerTransition], None]:
        """A circuit breaker listener that alerts when the breaker of ``credential`` opens."""

        def listener(transition: BreakerTransition) -> None:
            alert = alert_from_transition(transition, credential=credential, tenant_id=tenant_id)
            if alert is not None:
                self.send(alert)

        return listener

    def send(self, alert: Alert) -> bool:
        """Send ``alert`` once per incident; a ``resolved`` one only where an alert went out.

        See :func:`~airflow_provider_servicetitan.notifications.dispatch.dispatch`. Returns whether
        the alert was sent (to the log at least); never raises.
        """
        return dispatch(alert, dedup=self.dedup, channels=self.channels)

    def resolve(self, credential: str, kinds: Iterable[AlertKind | str], *, tenant_id: str | int | None = None) -> bool:
        """Tell a person once that ``credential`` works again: one ``resolved`` message naming those
        of ``kinds`` that had an open incident, which it closes (their alert windows end too).

        Of several processes resolving the same credential, exactly one sends it; nothing is sent
        when none of ``kinds`` is open (or ``kinds`` is empty). Returns whether it was sent; never
        raises.
        """
        wanted = list(kinds)
        if not wanted:
            return False
        try:
            alert = resolved_alert(credential, wanted, tenant_id=None if tenant_id is None else str(tenant_id))
        except ValueError:
            logger.exception("could not resolve the ServiceTitan incidents of %s", credential)
            return False
        return self.send(alert)


def _log_url(ti: object) -> str | None:
    try:
        url = getattr(ti, "log_url", None)
    except Exception:
        return None
    return url if isinstance(url, str) and url else None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _task_details(ti: object) -> dict[str, DetailValue]:
    details: dict[str, DetailValue] = {}
    for name in ("dag_id", "task_id", "run_id", "map_index", "try_number"):
        value = getattr(ti, name, None)
        if isinstance(value, str | int) and not (name == "map_index" and value == -1):
            details[name] = value
    return details
