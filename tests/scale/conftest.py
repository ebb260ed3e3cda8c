"""Fixtures of the scale test: the e2e harness's Airflow on CeleryExecutor with several workers, a sandbox of
many tenants, a private Redis for the provider's state (its commands counted exactly) and a StatsD receiver.

Settings come from the environment (:mod:`tests.scale.settings`; ``make scale`` passes them).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from airflow_provider_servicetitan.sandbox import SandboxConfig
from tests.chaos.servers import PrivateRedis
from tests.e2e.conftest import _reporter
from tests.e2e.session import E2ESession, e2e_session
from tests.scale.celery_workers import CeleryWorkers, celery_app, celery_env, delete_broker_keys
from tests.scale.settings import ScaleSettings
from tests.scale.statsd import StatsdReceiver

__all__ = ["scale_cluster"]

# Tokens outlive the run (ServiceTitan's last 900 s): "one token per credential" then holds for the whole
# test, healing and the last Clear included, whatever its length on a slow machine.
TOKEN_LIFETIME = 4 * 3600


@dataclass
class ScaleCluster:
    """Everything the scale test observes.

    :param session: the e2e session (services, REST, sandbox, warehouse, alerts) on CeleryExecutor.
    :param workers: the Celery workers.
    :param statsd: the provider's metrics as the services sent them.
    :param redis_url: the private Redis of the provider's state (tokens, breakers, limiter, alert dedup).
    :param report: writes a line to the terminal now, capture bypassed.
    """

    settings: ScaleSettings
    session: E2ESession
    workers: CeleryWorkers
    statsd: StatsdReceiver
    redis_url: str
    report: Callable[[str], None]


def sandbox_config(settings: ScaleSettings) -> SandboxConfig:
    """Many small tenants, ServiceTitan's rate limit of 60 requests/s per tenant, changes visible at once."""
    return SandboxConfig(
        tenants=settings.tenants,
        records=settings.records,
        seed=15,
        recent_changes_delay=0,
        rate_limit=60,
        token_expires_in=TOKEN_LIFETIME,
    )


def scale_env(settings: ScaleSettings, broker_prefix: str, statsd: StatsdReceiver) -> dict[str, str]:
    """CeleryExecutor, the shards, twice as many schedulable tasks as slots (the queue stays fed), metrics."""
    queued = str(2 * settings.slots)
    return {
        **celery_env(settings.broker_url, broker_prefix),
        "AIRFLOW__CORE__MAX_MAP_LENGTH": str(settings.max_map_length),
        "SERVICETITAN_CREDENTIAL_SHARDS": str(settings.shards),
        "AIRFLOW__CORE__PARALLELISM": queued,
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": queued,
        **statsd.env(),
    }


@pytest.fixture(scope="session")
def scale_cluster(request: pytest.FixtureRequest) -> Iterator[ScaleCluster]:
    settings = ScaleSettings.from_env()
    report = _reporter(request.config)
    report(
        f"scale: {settings.tenants} tenants, max_map_length {settings.max_map_length}, {settings.shards} shard(s), "
        f"{settings.workers} Celery workers x {settings.concurrency}"
    )
    broker_prefix = f"st_scale_{uuid.uuid4().hex[:10]}:"
    with ExitStack() as stack:
        redis_server = PrivateRedis()
        stack.callback(redis_server.close)
        redis_server.start()
        statsd = stack.enter_context(StatsdReceiver())
        stack.callback(_clean_broker, settings.broker_url, broker_prefix, report)
        session = stack.enter_context(
            e2e_session(
                report,
                sandbox_config=sandbox_config(settings),
                extra_env=scale_env(settings, broker_prefix, statsd),
                redis_url=redis_server.url,
            )
        )
        app = celery_app(settings.broker_url, broker_prefix)
        stack.callback(app.close)
        workers = CeleryWorkers(session.services, app, settings.workers, settings.concurrency)
        stack.callback(workers.stop)
        with session.timer.phase("celery workers ready"):
            workers.start()
            workers.wait_until_ready()
        yield ScaleCluster(settings, session, workers, statsd, redis_server.url, report)


def _clean_broker(broker_url: str, prefix: str, report: Callable[[str], None]) -> None:
    report(f"scale: deleted {delete_broker_keys(broker_url, prefix)} broker keys of prefix {prefix}")
