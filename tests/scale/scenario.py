"""The scale run itself: incidents set up, one run over every credential, the outage healed by a person's Clear,
and everything observed on the way (task instances, sandbox stats, metrics, Redis commands, rows, memory)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from airflow_provider_servicetitan.metrics import BREAKER_TRANSITIONS, TOKEN_RENEWALS
from airflow_provider_servicetitan.shards import group_id
from airflow_provider_servicetitan.storage.store import SyncStore
from tests.e2e.rest import AirflowTimeout, TaskSelector
from tests.e2e.session import DAG_FILE, DAG_ID, SERVICETITAN_CONN_TYPE
from tests.e2e.test_run_semantics import QUICK_RETRIES
from tests.scale.conftest import ScaleCluster
from tests.scale.figures import sync_spans
from tests.scale.probes import CommandStats, MemorySampler, RedisFootprint, cpu_seconds, table_rows
from tests.scale.settings import ScaleSettings

WRONG_SECRET = "cs1.not-the-secret"
# Opens on the second failed call and stays open longer than the run: no probe is admitted while the
# outage lasts, so each transition happens once (closed->open, then open->half_open->closed after the Clear).
OUTAGE_BREAKER = {"failure_threshold": 2, "minimum_calls": 2, "open_seconds": 3000, "max_open_seconds": 3000}
OUTAGE_SECONDS = 4 * 3600  # on the sandbox clock; ended by the test
DONE = frozenset({"success", "failed", "skipped", "upstream_failed"})
_POLL = 3.0


def task_of(settings: ScaleSettings, index: int, kind: str) -> tuple[str, int]:
    """The mapped instance (task id, map index) of credential ``index``'s ``sync`` or ``recover``."""
    shard, map_index = settings.shard_of(index)
    return f"{group_id(shard)}.{kind}", map_index


@dataclass(frozen=True)
class Observed:
    """What one scale run did, read once it ended (before any assertion).

    :param healing: the task instances the person's Clear of the outage credential cleared.
    :param others_done: seconds from the trigger until every credential but the outage one was done.
    :param wall: seconds from the trigger until the run ended.
    :param transitions: ``servicetitan.breaker.transitions`` by (credential, from_state, to_state).
    :param renewals: ``servicetitan.token.renewals`` by (credential,).
    :param spans: the sync's own seconds per credential, from the warehouse's ``sync_log``.
    """

    run_id: str
    state: str
    run: dict[str, Any]
    healing: list[dict[str, Any]]
    instances: list[dict[str, Any]]
    sandbox_stats: dict[str, Any]
    transitions: Counter[tuple[str, ...]]
    renewals: Counter[tuple[str, ...]]
    tasks_per_worker: dict[str, int]
    redis_used: CommandStats
    redis_held: RedisFootprint
    cpu: dict[str, float]
    rows_added: Counter[str]
    peak_rss: dict[str, int]
    peak_pss: dict[str, int]
    memory_samples: int
    others_done: float
    wall: float
    spans: dict[str, float]

    @property
    def states(self) -> dict[tuple[str, int], str | None]:
        return {(ti["task_id"], ti["map_index"]): ti["state"] for ti in self.instances}


def configure_incidents(cluster: ScaleCluster) -> None:
    """The rejected connection gets a wrong secret; the outage one a breaker that stays open, quick retries."""
    settings, session = cluster.settings, cluster.session
    rejected = session.connection_fields(settings.rejected)
    rejected["password"] = WRONG_SECRET
    session.rest.update_connection(session.credentials[settings.rejected], SERVICETITAN_CONN_TYPE, **rejected)
    outage = session.connection_fields(settings.outage)
    outage["extra"] = {**outage["extra"], "breaker": OUTAGE_BREAKER, "retry": QUICK_RETRIES}
    session.rest.update_connection(session.credentials[settings.outage], SERVICETITAN_CONN_TYPE, **outage)
    session.sandbox.admin.set_faults(outage_seconds=OUTAGE_SECONDS, tenants=[session.tenant(settings.outage)])


def wait_until_done(
    cluster: ScaleCluster,
    run_id: str,
    instances: Collection[TaskSelector],
    *,
    must_not_fail: Collection[TaskSelector],
    timeout: float,
) -> None:
    """Poll the run's task states until every one of ``instances`` is done; fail at once when one of
    ``must_not_fail`` fails or waits for a retry (with its log), or a Celery worker exits."""
    rest = cluster.session.rest
    deadline = time.monotonic() + timeout
    while True:
        states = rest.task_states(DAG_ID, run_id)
        failing = sorted(str(task) for task in must_not_fail if states.get(task) in ("failed", "up_for_retry"))
        if failing:
            raise AssertionError(f"failed: {failing[:10]}\n{rest.failure_logs(DAG_ID, run_id)}")
        if all(states.get(task) in DONE for task in instances):
            return
        cluster.workers.check_running()
        if time.monotonic() > deadline:
            pending = sorted(str(task) for task in instances if states.get(task) not in DONE)
            raise AirflowTimeout(
                f"{len(pending)} instances not done, e.g. {pending[:10]}\n{cluster.session.services.logs_tail()}"
            )
        time.sleep(_POLL)


def run_with_incidents(cluster: ScaleCluster) -> Observed:
    """Trigger one run over every credential; once all but the outage one are done, end the outage and clear
    its waiting ``sync`` (as a person would); wait for the run's end and read what it did."""
    settings, session = cluster.settings, cluster.session
    rest, credentials = session.rest, session.credentials
    healthy = [index for index in range(settings.tenants) if index not in (settings.outage, settings.rejected)]
    outage_sync = task_of(settings, settings.outage, "sync")
    configure_incidents(cluster)
    session.ready_dag(DAG_ID, DAG_FILE)

    metadata_url = session.services.metadata_url
    rows_before = table_rows(metadata_url)
    redis_before = CommandStats.read(cluster.redis_url)
    footprint_before = RedisFootprint.read(cluster.redis_url)
    processes = {**cluster.workers.pids(), **{name: p.process.pid for name, p in session.services.processes.items()}}
    cpu_before = cpu_seconds(processes)
    with MemorySampler(cluster.workers.pids()) as memory:
        started = time.monotonic()
        run_id = rest.trigger(DAG_ID, {"connections": credentials})
        rest.wait_for_task_state(DAG_ID, run_id, outage_sync, {"deferred"}, timeout=settings.timeout())
        wait_until_done(
            cluster,
            run_id,
            [task_of(settings, index, kind) for index in [*healthy, settings.rejected] for kind in ("sync", "recover")],
            must_not_fail=[task_of(settings, index, "sync") for index in healthy],
            timeout=settings.timeout(),
        )
        others_done = time.monotonic() - started
        session.sandbox.admin.set_faults("none")  # the outage is over
        # A person clears the waiting task: its new try asks the breaker for a probe at once.
        healing = rest.clear(DAG_ID, run_id, [outage_sync], only_failed=False)
        state = rest.wait_for_run(DAG_ID, run_id, timeout=settings.timeout())
        wall = time.monotonic() - started
    redis_used = CommandStats.read(cluster.redis_url).since(redis_before)
    redis_held = RedisFootprint.read(cluster.redis_url).since(footprint_before)
    cpu = {name: seconds - cpu_before.get(name, 0.0) for name, seconds in cpu_seconds(processes).items()}
    rows_added = +(table_rows(metadata_url) - rows_before)
    with closing(SyncStore(session.warehouse_url, table_prefix=session.table_prefix)) as store:
        spans = sync_spans(store, run_id)
    return Observed(
        run_id=run_id,
        state=state,
        run=rest.dag_run(DAG_ID, run_id),
        healing=healing,
        instances=rest.task_instances(DAG_ID, run_id),
        sandbox_stats=session.sandbox.admin.stats(),
        transitions=cluster.statsd.counts(BREAKER_TRANSITIONS, "credential", "from_state", "to_state"),
        renewals=cluster.statsd.counts(TOKEN_RENEWALS, "credential"),
        tasks_per_worker=cluster.workers.tasks_run(),
        redis_used=redis_used,
        redis_held=redis_held,
        cpu=cpu,
        rows_added=rows_added,
        peak_rss=dict(memory.peak_rss),
        peak_pss=dict(memory.peak_pss),
        memory_samples=memory.samples,
        others_done=others_done,
        wall=wall,
        spans=spans,
    )
