"""The dispatcher without Airflow: one alert per incident, channels that fail alone, and an
all-clear only where an alert went out, in one process (injected clock) and across Redis."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import pytest
import redis

from airflow_provider_servicetitan.notifications.alerts import Alert, AlertKind
from airflow_provider_servicetitan.notifications.classify import dead_letter_alert, resolved_alert
from airflow_provider_servicetitan.notifications.dedup import AlertDeduplicator
from airflow_provider_servicetitan.notifications.dispatch import dispatch
from tests.helpers import FakeClock

DISPATCH_LOGGER = "airflow_provider_servicetitan.notifications.dispatch"
CRED = "servicetitan_acme"
WINDOW = 60.0


@dataclass
class Inbox:
    """A channel that keeps what it is given."""

    name: str = "inbox"
    alerts: list[Alert] = field(default_factory=list)

    def deliver(self, alert: Alert) -> None:
        self.alerts.append(alert)

    @property
    def kinds(self) -> list[str]:
        return [alert.kind.value for alert in self.alerts]


@dataclass
class Unreachable:
    """A channel whose far end is down."""

    name: str = "unreachable"

    def deliver(self, alert: Alert) -> None:
        raise ConnectionError("connection refused")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dedup(clock: FakeClock) -> AlertDeduplicator:
    """In-process deduplication: no Redis configured."""
    return AlertDeduplicator(None, window_seconds=WINDOW, clock=clock)


def too_many_failed_records() -> Alert:
    return dead_letter_alert(CRED, 80, 50)


def all_clear() -> Alert:
    return resolved_alert(CRED, AlertKind.DEAD_LETTERS_OVER_THRESHOLD)


def test_an_incident_alerts_once_per_window(dedup: AlertDeduplicator, clock: FakeClock) -> None:
    inbox = Inbox()

    sent = [dispatch(too_many_failed_records(), dedup=dedup, channels=[inbox]) for _ in range(3)]
    clock.now += WINDOW + 1
    after_the_window = dispatch(too_many_failed_records(), dedup=dedup, channels=[inbox])

    assert sent == [True, False, False]
    assert after_the_window
    assert inbox.kinds == ["dead_letters_over_threshold"] * 2


def test_another_credential_or_kind_is_another_incident(dedup: AlertDeduplicator) -> None:
    inbox = Inbox()

    assert dispatch(too_many_failed_records(), dedup=dedup, channels=[inbox])
    assert dispatch(dead_letter_alert("servicetitan_other", 80, 50), dedup=dedup, channels=[inbox])

    assert [alert.credential for alert in inbox.alerts] == [CRED, "servicetitan_other"]


def test_a_failing_channel_is_logged_and_the_others_still_deliver(dedup: AlertDeduplicator, caplog) -> None:
    inbox = Inbox()

    with caplog.at_level(logging.ERROR, logger=DISPATCH_LOGGER):
        assert dispatch(too_many_failed_records(), dedup=dedup, channels=[Unreachable(), inbox])

    assert inbox.kinds == ["dead_letters_over_threshold"]
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith(f"[ServiceTitan] Too many failed records: {CRED}\nWhat happened:")
    assert messages[1:] == [
        f"ServiceTitan alert 'Too many failed records: {CRED}': unreachable failed: ConnectionError: connection refused"
    ]
    assert not dispatch(too_many_failed_records(), dedup=dedup, channels=[inbox]), "delivered once: deduplicated"


def test_an_alert_no_channel_delivered_is_tried_again_by_the_next_occurrence(dedup: AlertDeduplicator) -> None:
    inbox = Inbox()

    assert dispatch(too_many_failed_records(), dedup=dedup, channels=[Unreachable()])
    assert dispatch(too_many_failed_records(), dedup=dedup, channels=[inbox])
    assert not dispatch(too_many_failed_records(), dedup=dedup, channels=[inbox])

    assert inbox.kinds == ["dead_letters_over_threshold"]


def test_without_channels_the_log_is_the_delivery(dedup: AlertDeduplicator, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger=DISPATCH_LOGGER):
        assert dispatch(too_many_failed_records(), dedup=dedup, channels=[])
        assert not dispatch(too_many_failed_records(), dedup=dedup, channels=[])

    assert len(caplog.records) == 1


def test_all_clear_only_where_an_alert_went_out_and_only_once(dedup: AlertDeduplicator, caplog) -> None:
    inbox = Inbox()

    assert not dispatch(all_clear(), dedup=dedup, channels=[inbox]), "nothing was alerted: nothing to resolve"
    assert dispatch(too_many_failed_records(), dedup=dedup, channels=[inbox])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=DISPATCH_LOGGER):
        assert dispatch(all_clear(), dedup=dedup, channels=[inbox])
    assert not dispatch(all_clear(), dedup=dedup, channels=[inbox])

    assert inbox.kinds == ["dead_letters_over_threshold", "resolved"]
    assert inbox.alerts[1].details["closed"] == "dead_letters_over_threshold"
    assert [record.levelno for record in caplog.records if record.name == DISPATCH_LOGGER] == [logging.INFO]
    # Resolved ends the window: the next failure is a new incident.
    assert dispatch(too_many_failed_records(), dedup=dedup, channels=[inbox])


def test_an_all_clear_of_one_kind_leaves_the_other_incidents_open(dedup: AlertDeduplicator) -> None:
    inbox = Inbox()
    opened = dead_letter_alert(CRED, 80, 50)
    dispatch(opened, dedup=dedup, channels=[inbox])
    circuit = resolved_alert(CRED, AlertKind.CIRCUIT_OPENED)

    assert not dispatch(circuit, dedup=dedup, channels=[inbox])
    assert dispatch(resolved_alert(CRED), dedup=dedup, channels=[inbox]), "an all-clear of every kind closes it"

    assert inbox.kinds == ["dead_letters_over_threshold", "resolved"]


def test_workers_sharing_redis_alert_and_resolve_once(redis_client: redis.Redis, key_prefix: str) -> None:
    workers = [AlertDeduplicator(redis_client, namespace=key_prefix, window_seconds=WINDOW) for _ in range(3)]
    inbox = Inbox()

    alerted = [dispatch(too_many_failed_records(), dedup=worker, channels=[inbox]) for worker in workers]
    resolved = [dispatch(all_clear(), dedup=worker, channels=[inbox]) for worker in itertools.islice(workers, 1, 3)]

    assert alerted == [True, False, False]
    assert resolved == [True, False]
    assert inbox.kinds == ["dead_letters_over_threshold", "resolved"]
