"""Worker processes of the multi-process alert tests (importable, so they work with spawn)."""

from __future__ import annotations

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from airflow_provider_servicetitan.notifications.alerts import Alert
from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier

# A guard against a hang, never a synchronisation (the barrier and the queue synchronise). Spawning
# the workers, each importing Airflow, takes ~45 s on a loaded 2-core machine: the guard stays well
# clear of that and below pytest-timeout (300 s).
TIMEOUT = 240


def send_together(settings: dict[str, Any], alert: Alert, barrier: Barrier, results: Queue[Any]) -> None:
    """Build a notifier (connecting to Redis), wait for every worker, then send the same alert."""
    notifier = ServiceTitanAlertNotifier(**settings)
    notifier.dedup.open_incidents(alert.credential)  # connected before the race starts
    barrier.wait(TIMEOUT)
    results.put(notifier.send(alert))


def resolve_together(
    settings: dict[str, Any], credential: str, kinds: list[str], barrier: Barrier, results: Queue[Any]
) -> None:
    """Build a notifier (connecting to Redis), wait for every worker, then resolve the same incidents."""
    notifier = ServiceTitanAlertNotifier(**settings)
    notifier.dedup.open_incidents(credential)  # connected before the race starts
    barrier.wait(TIMEOUT)
    results.put(notifier.resolve(credential, kinds))
