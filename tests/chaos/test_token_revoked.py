"""Chaos row: every access token is revoked mid-sync, twice."""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.sync.engine import SyncEvents, sync_resource
from tests.chaos.audit import audit
from tests.chaos.points import at_export_pages
from tests.helpers import credentials_for

pytestmark = pytest.mark.chaos

RESOURCES = ("customers", "jobs", "invoices")
REVOKE_AFTER_PAGES = (3, 14)  # of 30 pages: 10 per resource


def test_token_revoked_mid_sync(chaos_row, start_sandbox, make_client, store):
    sandbox = start_sandbox(records=200, export_page_size=20)
    events = SyncEvents()
    client = make_client(credentials_for(sandbox))
    client.retry_policy = client.retry_policy.with_overrides(listener=events.on_retry)
    at_export_pages(client, dict.fromkeys(REVOKE_AFTER_PAGES, sandbox.admin.revoke_tokens))

    summaries = [
        sync_resource(client, store, credential="st", resource=resource, run_id="run-1", events=events)
        for resource in RESOURCES
    ]

    stats = sandbox.admin.stats()
    result = audit(sandbox, store, [client.tenant_id], RESOURCES, credentials=["st"])
    chaos_row.report(
        result,
        token_requests=stats["token_requests_total"],
        retries=sum(row.retries for row in store.get_run_log("run-1")),
        note=f"tokens revoked after pages {', '.join(map(str, REVOKE_AFTER_PAGES))}",
    )
    assert [summary.status for summary in summaries] == ["success"] * len(RESOURCES)
    assert (result.lost, result.duplicates, result.unexpected) == (0, 0, 0)
    assert result.in_warehouse == result.expected
    # One 401 per revocation, answered by exactly one renewal each.
    assert stats["requests_by_status"]["401"] == len(REVOKE_AFTER_PAGES)
    assert (stats["token_requests_total"], stats["token_requests_issued"]) == (3, 3)
