"""Where alerts go besides the task log: a webhook (Slack-compatible) and email.

A channel raises when it cannot deliver; the notifier logs it and goes on with the other channels.
Providers are imported when a channel delivers, so a deployment without a webhook does not need
the HTTP provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

import requests

from airflow_provider_servicetitan.notifications.alerts import Alert

__all__ = ["AlertChannel", "EmailChannel", "WebhookChannel", "describe_failure"]


class AlertChannel(Protocol):
    """Something that delivers an alert, or raises."""

    @property
    def name(self) -> str: ...

    def deliver(self, alert: Alert) -> None: ...


class WebhookChannel:
    """POST the alert as a Slack incoming-webhook body through an Airflow HTTP connection.

    The URL is the connection's base URL (its host may be a whole URL, path included) joined with
    ``endpoint``. Its path is masked in the logs: a Slack webhook path is a secret.

    :param conn_id: the Airflow HTTP connection.
    :param endpoint: path after the connection's base URL, if the host does not hold it.
    :param timeout: seconds to wait for the webhook.
    """

    def __init__(self, conn_id: str, *, endpoint: str | None = None, timeout: float = 10.0) -> None:
        self.conn_id = conn_id
        self.endpoint = endpoint
        self.timeout = timeout

    @property
    def name(self) -> str:
        return f"webhook {self.conn_id!r}"

    def deliver(self, alert: Alert) -> None:
        from airflow.providers.http.hooks.http import HttpHook
        from airflow.sdk.log import mask_secret

        hook = HttpHook(method="POST", http_conn_id=self.conn_id)
        url = urlsplit(hook.url_from_endpoint(self.endpoint))
        secret = url.path + (f"?{url.query}" if url.query else "")
        if len(secret) > 1:
            mask_secret(secret)
        hook.run(endpoint=self.endpoint, json=alert.as_slack_payload(), extra_options={"timeout": self.timeout})


class EmailChannel:
    """Email the alert through an Airflow SMTP connection.

    :param to: recipient(s).
    :param smtp_conn_id: the Airflow SMTP connection.
    :param from_email: sender; default the connection's ``from_email`` extra.
    """

    def __init__(
        self, to: str | Sequence[str], *, smtp_conn_id: str = "smtp_default", from_email: str | None = None
    ) -> None:
        self.to = [to] if isinstance(to, str) else list(to)
        self.smtp_conn_id = smtp_conn_id
        self.from_email = from_email

    @property
    def name(self) -> str:
        return f"email via {self.smtp_conn_id!r}"

    def deliver(self, alert: Alert) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        subject, html_body = alert.as_email()
        with SmtpHook(smtp_conn_id=self.smtp_conn_id) as smtp:
            smtp.send_email_smtp(to=self.to, subject=subject, html_content=html_body, from_email=self.from_email)


def describe_failure(error: BaseException) -> str:
    """A delivery failure for the log. A ``requests`` error names its URL, which may be a secret
    webhook path: only its class is given."""
    if isinstance(error, requests.RequestException):
        return type(error).__name__
    return f"{type(error).__name__}: {error}"
