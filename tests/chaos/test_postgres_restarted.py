"""Chaos row: the warehouse's PostgreSQL is stopped (``pg_ctl stop -m fast``) mid-sync, then restarted."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from airflow_provider_servicetitan.storage.store import SyncStore
from airflow_provider_servicetitan.sync.engine import SyncEvents, sync_resource
from tests.chaos.audit import audit
from tests.chaos.points import before_commits
from tests.helpers import credentials_for

pytestmark = pytest.mark.chaos

RESOURCE = "customers"
PAGES = 15  # 300 records, 20 a page
STOP_AT_PAGE = 3  # the first try stops the server before it stores page 3: pages 1-2 are committed
RESTART_AT_PAGE = STOP_AT_PAGE + 5  # the second try restarts it between fetching and storing a page


def test_postgres_stopped_mid_sync_then_restarted(chaos_row, start_sandbox, make_client, private_postgres):
    sandbox = start_sandbox(records=300, export_page_size=20)
    events = SyncEvents()
    client = make_client(credentials_for(sandbox))
    client.retry_policy = client.retry_policy.with_overrides(listener=events.on_retry)

    def restart() -> None:
        private_postgres.stop("fast")
        private_postgres.start()

    def sync(store: SyncStore) -> str:
        return sync_resource(client, store, credential="st", resource=RESOURCE, run_id="run-1", events=events).status

    def export_requests() -> int:
        return sandbox.admin.stats()["requests_by_resource"].get(f"export/{RESOURCE}", 0)

    with SyncStore(private_postgres.url) as store:
        store.create_tables()
        # Commits counted over both tries: try 1 fails on its 3rd, try 2 stores page 3 first.
        before_commits(store, {STOP_AT_PAGE: lambda: private_postgres.stop("fast"), RESTART_AT_PAGE: restart})
        with pytest.raises(OperationalError):
            sync(store)  # the first try dies with the database
        private_postgres.start()
        committed = store.get_checkpoint("st", RESOURCE)
        first_try_requests = export_requests()

        status = sync(store)  # the retry (same run, as Airflow's retry of the task)

        resumed_requests = export_requests() - first_try_requests
        result = audit(sandbox, store, [client.tenant_id], [RESOURCE], credentials=["st"])
        log = store.get_run_log("run-1")
        chaos_row.report(
            result,
            token_requests=sandbox.admin.stats()["token_requests_total"],
            retries=sum(row.retries for row in log),
            note=f"stopped at page {STOP_AT_PAGE} (try 1), restarted at page {RESTART_AT_PAGE} (try 2); "
            f"try 2 fetched {resumed_requests} page(s)",
        )
    assert committed is not None
    assert status == "success"
    assert (result.lost, result.duplicates, result.unexpected) == (0, 0, 0)
    assert result.in_warehouse == result.expected
    # The retry resumed at the last committed page (2 of 15), not from the start.
    assert resumed_requests == PAGES - (STOP_AT_PAGE - 1)
    assert [(row.status, row.pages) for row in log] == [("success", PAGES)]
