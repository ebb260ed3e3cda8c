"""Alerts for a person: built from failures and breaker transitions, deduplicated through Redis.

``ServiceTitanAlertNotifier`` is imported on first use, so the alert model, the classification,
the deduplicator and the dispatcher can be used without importing Airflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_servicetitan.notifications.alerts import Alert, AlertKind, make_incident_key
from airflow_provider_servicetitan.notifications.classify import (
    TaskTries,
    alert_from_exception,
    alert_from_transition,
    dead_letter_alert,
    resolved_alert,
)
from airflow_provider_servicetitan.notifications.dedup import AlertDeduplicator
from airflow_provider_servicetitan.notifications.dispatch import dispatch

if TYPE_CHECKING:
    from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier

__all__ = [
    "Alert",
    "AlertDeduplicator",
    "AlertKind",
    "ServiceTitanAlertNotifier",
    "TaskTries",
    "alert_from_exception",
    "alert_from_transition",
    "dead_letter_alert",
    "dispatch",
    "make_incident_key",
    "resolved_alert",
]


def __getattr__(name: str) -> Any:
    if name == "ServiceTitanAlertNotifier":
        from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier

        return ServiceTitanAlertNotifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
