"""Send an alert to a person once per incident, and an all-clear only where an alert went out.

The rules, without Airflow:

- An incident alerts once per deduplication window, across every worker sharing the Redis of
  ``dedup``. An alert that no channel delivered does not count: the next occurrence tries again,
  rather than leave a person uninformed for a whole window.
- A ``resolved`` alert goes out only if the credential has open incidents (of the kinds it
  resolves), and closes them: exactly one of several processes resolving them sends it, one
  message naming every incident it closed.
- Every alert is logged (at error, an all-clear at info); each channel is tried even when another
  fails, and a failure never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from airflow_provider_servicetitan.notifications.alerts import Alert, AlertKind
from airflow_provider_servicetitan.notifications.channels import AlertChannel, describe_failure
from airflow_provider_servicetitan.notifications.dedup import AlertDeduplicator

__all__ = ["dispatch"]

logger = logging.getLogger(__name__)


def dispatch(alert: Alert, *, dedup: AlertDeduplicator, channels: Sequence[AlertChannel]) -> bool:
    """Send ``alert`` to the log and ``channels`` unless ``dedup`` says its incident already alerted.

    Returns whether it was sent (to the log at least); never raises.
    """
    try:
        if alert.kind is AlertKind.RESOLVED:
            closed = dedup.close_incidents(alert.credential, alert.resolves)
            if not closed:
                logger.debug("%s: no open incident, no resolved message", alert.credential)
                return False
            alert = alert.closing(closed)
        elif not dedup.first_in_window(alert.incident_key, credential=alert.credential, kind=alert.kind):
            logger.info("ServiceTitan alert %r already sent in this window; not repeated", alert.title)
            return False
        if not _deliver(alert, channels) and alert.kind is not AlertKind.RESOLVED:
            dedup.forget(alert.incident_key)
    except Exception:
        logger.exception("could not send the ServiceTitan alert %r", alert.title)
        return False
    return True


def _deliver(alert: Alert, channels: Sequence[AlertChannel]) -> bool:
    """Log ``alert`` and hand it to every channel; whether a channel (if any) delivered it."""
    level = logging.INFO if alert.kind is AlertKind.RESOLVED else logging.ERROR
    logger.log(level, "%s", alert.as_text())
    delivered = 0
    for channel in channels:
        try:
            channel.deliver(alert)
        except Exception as error:
            logger.error("ServiceTitan alert %r: %s failed: %s", alert.title, channel.name, describe_failure(error))
        else:
            delivered += 1
    return delivered > 0 or not channels
