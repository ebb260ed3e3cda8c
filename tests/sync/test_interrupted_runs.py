"""A ``running`` sync-log row whose process is gone is marked ``interrupted`` by the next sync of
its credential and resource, and a row whose process may still live is never touched.

The dead processes are real: a child killed with SIGKILL while the sandbox holds its request, a
child spawned and reaped, and a sync of this process whose database write failed at the end.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.resilience.breaker import CircuitBreaker
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.storage import INTERRUPTED, RunLog, RunOwner, SyncStore
from airflow_provider_servicetitan.sync.engine import sync_resource
from airflow_provider_servicetitan.sync.liveness import STALE_AFTER, close_interrupted_runs, this_process
from tests.helpers import credentials_for, wait_for

CTX = multiprocessing.get_context("spawn")
CREDENTIAL = "st_child"
RESOURCE = "customers"
# Every API request of the sandbox is held (until the client gives up or disconnects).
HOLD_EVERY_REQUEST = {"timeout_rate": 1.0, "timeout_hold": 120}


def sync_in_child(fields: dict[str, Any], store_url: str, run_id: str) -> None:
    """A sync in a child process, waiting as long as the sandbox holds its request."""
    client = ServiceTitanClient(
        TokenManager(ServiceTitanCredentials(**fields), None),
        breaker=CircuitBreaker("child", None, classify=classify_servicetitan_error),
        retry_policy=RetryPolicy(max_attempts=1),
        timeout=(2.0, 300.0),
    )
    with SyncStore(store_url) as store:
        sync_resource(client, store, credential=CREDENTIAL, resource=RESOURCE, run_id=run_id)


def only_row(store: SyncStore, run_id: str) -> RunLog:
    (row,) = store.get_run_log(run_id)
    return row


def exited_pid() -> int:
    """The PID of a process of this host that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The PID of a process of this host that lives for the whole test."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield child.pid
    child.kill()
    child.wait(timeout=30)


def test_a_killed_sync_is_marked_interrupted_by_the_next_sync_only_once_it_is_dead(
    start_sandbox, make_client, store, store_url
):
    sandbox = start_sandbox(records=60, export_page_size=20)
    credentials = credentials_for(sandbox)
    sandbox.admin.set_faults(**HOLD_EVERY_REQUEST)
    child = CTX.Process(target=sync_in_child, args=(dataclasses.asdict(credentials), store_url, "run-killed"))
    child.start()
    try:
        wait_for(lambda: [row.owner_pid for row in store.running_runs(CREDENTIAL, RESOURCE)] == [child.pid])
        # The child lives (held in its request): another sync must leave its row alone.
        assert close_interrupted_runs(store, CREDENTIAL, RESOURCE, by_run_id="run-overlapping") == []
        assert only_row(store, "run-killed").status == "running"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    sandbox.admin.set_faults("none")

    summary = sync_resource(
        make_client(credentials), store, credential=CREDENTIAL, resource=RESOURCE, run_id="run-next"
    )

    killed = only_row(store, "run-killed")
    assert (killed.status, killed.interrupted_by) == (INTERRUPTED, "run-next")
    assert f"its process {child.pid} on {this_process().host} is gone" in killed.message
    assert killed.finished_at is not None
    assert summary.status == only_row(store, "run-next").status == "success"
    assert store.running_runs(CREDENTIAL, RESOURCE) == []


def test_a_sync_whose_database_failed_at_the_end_is_interrupted_by_the_next_sync_of_this_process(
    start_sandbox, make_client, store
):
    sandbox = start_sandbox(records=40, export_page_size=20)
    client = make_client(credentials_for(sandbox))
    client.timeout = (2.0, 1.0)  # a held request ends, client-side, after one second; then a retry
    sandbox.admin.set_faults(**HOLD_EVERY_REQUEST)
    failures: list[BaseException] = []

    def sync_cut_off() -> None:
        try:
            sync_resource(client, store, credential=CREDENTIAL, resource=RESOURCE, run_id="run-cut-off")
        except Exception as error:  # the failure is what this test is about; it is asserted below
            failures.append(error)

    thread = threading.Thread(target=sync_cut_off)
    thread.start()
    try:
        wait_for(lambda: bool(store.running_runs(CREDENTIAL, RESOURCE)))
        # In progress in this very process: alive, whatever its heartbeat says.
        later = only_row(store, "run-cut-off").started_at + STALE_AFTER * 2
        assert close_interrupted_runs(store, CREDENTIAL, RESOURCE, by_run_id="run-overlapping", now=later) == []
        # The database loses the run log: the sync can neither commit a page nor close its row.
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE servicetitan_sync_log RENAME TO servicetitan_sync_log_away"))
        sandbox.admin.set_faults("none")
    finally:
        thread.join(timeout=60)
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE servicetitan_sync_log_away RENAME TO servicetitan_sync_log"))
    assert len(failures) == 1
    assert only_row(store, "run-cut-off").status == "running"

    summary = sync_resource(client, store, credential=CREDENTIAL, resource=RESOURCE, run_id="run-next")

    cut_off = only_row(store, "run-cut-off")
    assert (cut_off.status, cut_off.interrupted_by) == (INTERRUPTED, "run-next")
    assert f"its sync in process {os.getpid()}" in cut_off.message
    assert summary.status == "success"


def test_a_row_whose_process_exited_on_this_host_is_closed_at_once_but_not_by_its_own_run(store: SyncStore) -> None:
    reaped_pid = exited_pid()
    me = this_process()
    store.start_run("run-dead", CREDENTIAL, RESOURCE, RunOwner(host=me.host, scope=me.scope, pid=reaped_pid))

    assert close_interrupted_runs(store, CREDENTIAL, RESOURCE, by_run_id="run-dead") == []
    assert only_row(store, "run-dead").status == "running"
    (closed,) = close_interrupted_runs(store, CREDENTIAL, RESOURCE, by_run_id="run-next")

    assert closed.run_id == "run-dead"
    row = only_row(store, "run-dead")
    assert (row.status, row.interrupted_by) == (INTERRUPTED, "run-next")
    assert f"its process {reaped_pid} on {me.host} is gone" in row.message


def test_a_live_pid_on_this_host_is_no_proof_either_way_so_the_heartbeat_decides(
    store: SyncStore, live_pid: int
) -> None:
    me = this_process()
    store.start_run("run-live", CREDENTIAL, RESOURCE, RunOwner(host=me.host, scope=me.scope, pid=live_pid))
    heartbeat = only_row(store, "run-live").heartbeat_at

    assert close_interrupted_runs(store, CREDENTIAL, RESOURCE, by_run_id="run-next", now=heartbeat + STALE_AFTER) == []
    assert only_row(store, "run-live").status == "running"
    closed = close_interrupted_runs(
        store, CREDENTIAL, RESOURCE, by_run_id="run-next", now=heartbeat + STALE_AFTER + timedelta(seconds=1)
    )

    assert [row.run_id for row in closed] == ["run-live"]
    assert "no sign of life since" in only_row(store, "run-live").message


def test_a_row_of_another_host_is_closed_only_when_its_heartbeat_is_stale(store: SyncStore) -> None:
    # Same PID as this process, but another process table: the PID says nothing here.
    elsewhere = RunOwner(host="worker-b", scope="another-host", pid=os.getpid())
    store.start_run("run-elsewhere", CREDENTIAL, RESOURCE, elsewhere)
    started = only_row(store, "run-elsewhere").heartbeat_at
    store.commit_page(
        credential=CREDENTIAL,
        tenant_id=1,
        resource=RESOURCE,
        run_id="run-elsewhere",
        records=[],
        continue_from="tok-1",
    )
    last_page = only_row(store, "run-elsewhere").heartbeat_at
    assert last_page > started
    stale_for_the_start_only = started + STALE_AFTER + (last_page - started) / 2

    for not_yet in (stale_for_the_start_only, last_page + STALE_AFTER):
        assert close_interrupted_runs(store, CREDENTIAL, RESOURCE, by_run_id="run-next", now=not_yet) == []
    closed = close_interrupted_runs(
        store, CREDENTIAL, RESOURCE, by_run_id="run-next", now=last_page + STALE_AFTER + timedelta(seconds=1)
    )

    assert [row.run_id for row in closed] == ["run-elsewhere"]
    row = only_row(store, "run-elsewhere")
    assert (row.status, row.interrupted_by, row.owner_host) == (INTERRUPTED, "run-next", "worker-b")
