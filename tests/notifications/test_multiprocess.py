"""Real worker processes sending the same alert at the same moment: one message in all.

Workers are spawned (each its own interpreter and Redis connection, as Airflow workers are), build
their notifier from the same Airflow connections, and start together at a barrier.
"""

from __future__ import annotations

import multiprocessing

import pytest

from airflow_provider_servicetitan.errors import RetryExhaustedError, ServiceTitanServerError
from airflow_provider_servicetitan.notifications import ServiceTitanAlertNotifier, alert_from_exception
from airflow_provider_servicetitan.sync.credential import RESOLVED_BY_A_CLEAN_SYNC

from .conftest import WEBHOOK_CONN_ID
from .workers import TIMEOUT, resolve_together, send_together

SPAWN = multiprocessing.get_context("spawn")
WORKERS = 8


@pytest.mark.slow
def test_eight_processes_sending_one_incident_deliver_one_message(webhook, redis_connection, key_prefix) -> None:
    last_error = ServiceTitanServerError(status=500, title="Internal Server Error", trace_id="trace-mp")
    alert = alert_from_exception(RetryExhaustedError(5, last_error), credential="servicetitan_acme")
    settings = {"webhook_conn_id": WEBHOOK_CONN_ID, "redis_conn_id": redis_connection, "namespace": key_prefix}
    barrier, results = SPAWN.Barrier(WORKERS), SPAWN.Queue()
    workers = [SPAWN.Process(target=send_together, args=(settings, alert, barrier, results)) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    try:
        sent = [results.get(timeout=TIMEOUT) for _ in workers]
        for worker in workers:
            worker.join(TIMEOUT)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()

    assert sorted(sent) == [False] * (WORKERS - 1) + [True]
    [text] = webhook.texts
    assert "traceId trace-mp" in text


@pytest.mark.slow
def test_processes_resolving_one_recovery_deliver_one_resolved_message(webhook, redis_connection, key_prefix) -> None:
    credential = "servicetitan_acme"
    settings = {"webhook_conn_id": WEBHOOK_CONN_ID, "redis_conn_id": redis_connection, "namespace": key_prefix}
    opener = ServiceTitanAlertNotifier(**settings)
    for last_error in (ServiceTitanServerError(status=500, title="Internal Server Error"), TimeoutError("slow")):
        assert opener.send(alert_from_exception(RetryExhaustedError(5, last_error), credential=credential))
    workers_count = 4
    barrier, results = SPAWN.Barrier(workers_count), SPAWN.Queue()
    args = (settings, credential, list(RESOLVED_BY_A_CLEAN_SYNC), barrier, results)
    workers = [SPAWN.Process(target=resolve_together, args=args) for _ in range(workers_count)]
    for worker in workers:
        worker.start()
    try:
        sent = [results.get(timeout=TIMEOUT) for _ in workers]
        for worker in workers:
            worker.join(TIMEOUT)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()

    assert sorted(sent) == [False] * (workers_count - 1) + [True]
    [resolved] = webhook.texts[2:]
    assert resolved.startswith(f"*[ServiceTitan] Resolved: {credential}*")
    assert "Closed its open incidents: Retries exhausted." in resolved
    assert opener.dedup.open_incidents(credential) == []
