"""Chaos row: the Redis that holds tokens and breakers is SIGKILLed mid-sync, then restarted empty."""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.hooks.redis import redis_from_connection
from airflow_provider_servicetitan.resilience.breaker import CircuitBreaker
from airflow_provider_servicetitan.sync.engine import SyncEvents, sync_resource
from tests.chaos.audit import audit
from tests.chaos.points import at_export_pages
from tests.helpers import credentials_for, set_connection
from tests.resilience.test_breaker import Clock

pytestmark = pytest.mark.chaos

RESOURCES = ("customers", "jobs", "invoices")
KILL_AFTER_PAGE, RESTART_AFTER_PAGE = 3, 15  # of 30 pages: 10 per resource


def test_redis_sigkilled_mid_sync_and_restarted(
    chaos_row, start_sandbox, make_client, store, private_redis, key_prefix, monkeypatch
):
    sandbox = start_sandbox(records=200, export_page_size=20)
    # Built as the hook builds it from an Airflow connection: short timeouts, no redis-py retries.
    set_connection(monkeypatch, "st_chaos_redis", conn_type="redis", host="127.0.0.1", port=private_redis.port)
    shared = redis_from_connection("st_chaos_redis")
    events = SyncEvents()
    client = make_client(credentials_for(sandbox), shared=shared)
    client.retry_policy = client.retry_policy.with_overrides(listener=events.on_retry)
    # The breaker tries Redis again once per re-check interval: its injected clock is moved on by
    # one when Redis is back, so the next call re-checks whatever the speed of the machine.
    clock = Clock()
    breaker = client.breaker
    client.breaker = CircuitBreaker(
        breaker.name, shared, config=breaker.config, namespace=key_prefix, clock=clock, classify=breaker.classify
    )

    def restart() -> None:
        private_redis.start()
        clock.advance(breaker.config.redis_recheck_seconds)

    at_export_pages(client, {KILL_AFTER_PAGE: private_redis.kill, RESTART_AFTER_PAGE: restart})

    summaries = [
        sync_resource(client, store, credential="st", resource=resource, run_id="run-1", events=events)
        for resource in RESOURCES
    ]

    shared_again = client.breaker.backend
    result = audit(sandbox, store, [client.tenant_id], RESOURCES, credentials=["st"])
    chaos_row.report(
        result,
        token_requests=sandbox.admin.stats()["token_requests_total"],
        retries=sum(row.retries for row in store.get_run_log("run-1")),
        note=f"redis killed after page {KILL_AFTER_PAGE}, restarted after page {RESTART_AFTER_PAGE}",
    )
    assert [summary.status for summary in summaries] == ["success"] * len(RESOURCES)
    assert (result.lost, result.duplicates, result.unexpected) == (0, 0, 0)
    assert result.in_warehouse == result.expected
    # The worker kept its token in memory while Redis was gone: no extra token request.
    assert sandbox.admin.stats()["token_requests_total"] == 1
    # Once Redis answered again, the breaker shared its state there again.
    assert shared_again == "redis"
    assert shared.exists(*client.breaker.redis_keys)
