"""Chaos row: the worker running a sync is SIGKILLed three times, each time while the sandbox holds
its next request; a fourth worker then completes the sync."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from tests.chaos import workers
from tests.chaos.audit import audit
from tests.helpers import wait_for

pytestmark = pytest.mark.chaos

SPAWN = multiprocessing.get_context("spawn")
RESOURCES = ("customers", "jobs", "invoices")
PAGES_PER_KILLED_WORKER = 4  # the third worker dies in the second resource
KILLS = 3
TIMEOUT = 120


def committed_pages(env, run_id: str) -> int:
    with env.warehouse.store() as store:
        return sum(row.pages for row in store.get_run_log(run_id))


def test_worker_sigkilled_three_times_then_a_run_completes(chaos_row, operator_env):
    env = operator_env(records=200, export_page_size=20)
    conn_id = env.connect(0)
    admin = env.sandbox.admin

    def start_worker(run_id: str) -> multiprocessing.process.BaseProcess:
        settings = (conn_id, env.redis_conn_id, env.redis_namespace, env.warehouse.conn_id)
        worker = SPAWN.Process(
            target=workers.sync_as_worker, args=(*settings, env.warehouse.table_prefix, RESOURCES, run_id)
        )
        worker.start()
        return worker

    exit_codes: list[int | None] = []
    started: list[multiprocessing.process.BaseProcess] = []
    try:
        for attempt in range(1, KILLS + 1):
            # Counted afresh: once this many pages are served, the worker's next request waits.
            admin.set_faults(hold_after_pages=PAGES_PER_KILLED_WORKER)
            worker = start_worker(f"try-{attempt}")
            started.append(worker)
            admin.wait_for_held(1, timeout=TIMEOUT)
            # The worker fetches a page ahead of its commits: it commits what it was served, then waits.
            wait_for(lambda run_id=f"try-{attempt}": committed_pages(env, run_id) == PAGES_PER_KILLED_WORKER)
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(TIMEOUT)
            admin.wait_for_held(0, timeout=TIMEOUT)  # the sandbox saw the dead worker's request go
            exit_codes.append(worker.exitcode)
        admin.set_faults(hold_after_pages=None)
        worker = start_worker("try-final")
        started.append(worker)
        worker.join(TIMEOUT)
        exit_codes.append(worker.exitcode)
    finally:
        for worker in started:
            if worker.is_alive():
                worker.kill()
                worker.join(TIMEOUT)

    with env.warehouse.store() as store:
        logs = {
            run_id: store.get_run_log(run_id) for run_id in [f"try-{n}" for n in range(1, KILLS + 1)] + ["try-final"]
        }
        pages_per_try = [sum(row.pages for row in log) for log in logs.values()]
        records_written = sum(row.records_successful for log in logs.values() for row in log)
        killed_rows = [{row.resource: row.status for row in logs[f"try-{n}"]} for n in range(1, KILLS + 1)]
        result = audit(env.sandbox, store, [env.tenant(0)], RESOURCES, credentials=[conn_id])
    stats = admin.stats()
    chaos_row.report(
        result,
        token_requests=stats["token_requests_total"],
        retries=sum(row.retries for log in logs.values() for row in log),
        note=f"pages committed per worker {pages_per_try}, records written {records_written}, "
        f"exit codes {exit_codes}, killed workers' log rows {killed_rows}",
    )
    assert exit_codes == [-signal.SIGKILL] * KILLS + [0]
    # Each killed worker committed exactly the pages it was served, and every worker resumed where
    # the last one stopped: each record was written once over the four workers.
    assert pages_per_try[:KILLS] == [PAGES_PER_KILLED_WORKER] * KILLS
    assert records_written == result.expected
    assert (result.lost, result.duplicates, result.unexpected) == (0, 0, 0)
    assert result.in_warehouse == result.expected
    assert {row.resource: row.status for row in logs["try-final"]} == dict.fromkeys(RESOURCES, "success")
    # The row a killed worker left "running" was closed by the next sync of its resource (10 pages
    # a resource, 4 a worker: the third worker finished customers and died in jobs).
    assert killed_rows == [
        {"customers": "interrupted"},
        {"customers": "interrupted"},
        {"customers": "success", "jobs": "interrupted"},
    ]
    # The four workers shared one token through Redis.
    assert stats["token_requests_total"] == 1
