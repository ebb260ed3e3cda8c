"""Chaos row: the client secret is rotated in ServiceTitan while a sync runs.

The sandbox holds the sync's request once it has served ``HOLD_AFTER_PAGES`` export pages; the
test then rotates the tenant's secret, revoking its tokens as an owner does after a leak, and lets
the request go. It meets a revoked token; the client asks for a new one with the secret its
connection holds, the old one, and is refused: the task fails without Airflow retries and leaves
the credential ``needs_attention``. Once the connection holds the new secret, the next run obtains
a new token with it, never presents the old one, and completes the data from the checkpoints.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.sandbox import SandboxAdmin
from tests.chaos.audit import audit

pytestmark = pytest.mark.chaos

RESOURCES = ["customers", "jobs", "invoices"]
HOLD_AFTER_PAGES = 7  # of 15 (5 a resource): customers done, jobs 2 pages in
TIMEOUT = 60


def _rotate_once_held(admin: SandboxAdmin, tenant: int) -> str:
    """Once the sync's request is held: rotate the secret with its tokens revoked, then let the
    request go (also when something failed, so the sync never waits for nothing)."""
    try:
        admin.wait_for_held(1, timeout=TIMEOUT)
        return admin.rotate_secret(tenant, revoke_tokens=True)
    finally:
        admin.set_faults(hold_after_pages=None)


def _fingerprint(conn_id: str) -> str:
    return ServiceTitanHook(conn_id, None).get_credentials().secret_fingerprint


def test_secret_rotated_mid_sync_then_the_new_secret_completes(chaos_row, operator_env):
    env = operator_env(records=100, export_page_size=20)
    conn_id = env.connect(0)
    admin = env.sandbox.admin
    interrupted, next_run = env.dag(), env.dag()
    # One resource after another: the held request is the third page of jobs, customers done.
    with interrupted:
        env.sync(conn_id, servicetitan_resources=RESOURCES, max_concurrency=1)
    with next_run:
        env.sync(conn_id, servicetitan_resources=RESOURCES, max_concurrency=1)
    old_fingerprint = _fingerprint(conn_id)

    admin.set_faults(hold_after_pages=HOLD_AFTER_PAGES)
    with ThreadPoolExecutor(1) as chaos:
        rotation = chaos.submit(_rotate_once_held, admin, env.tenant(0))
        first = env.run(interrupted)
        new_secret = rotation.result(TIMEOUT)

    after_rotation = admin.stats()
    with env.warehouse.store() as store:
        status_after_rotation = store.get_credential_status(conn_id)
    env.connect(0, password=new_secret)  # a person puts the new secret into the connection
    new_fingerprint = _fingerprint(conn_id)
    second = env.run(next_run)

    stats = admin.stats()
    with env.warehouse.store() as store:
        result = audit(env.sandbox, store, [env.tenant(0)], RESOURCES, credentials=[conn_id])
        status_at_the_end = store.get_credential_status(conn_id)
        logs = [store.get_run_log(run.run_id) for run in (first, second)]
    first_log = {row.resource: (row.status, row.pages) for row in logs[0]}
    new_token_requests = stats["token_requests_total"] - after_rotation["token_requests_total"]
    new_tokens_issued = stats["token_requests_issued"] - after_rotation["token_requests_issued"]
    chaos_row.report(
        result,
        token_requests=stats["token_requests_total"],
        retries=sum(row.retries for log in logs for row in log),
        note=f"held after {HOLD_AFTER_PAGES} pages, secret rotated with its tokens revoked; interrupted run: "
        f"{after_rotation['requests_by_status'].get('401', 0)} 401, "
        f"{after_rotation['requests_by_status'].get('400', 0)} token request(s) refused; next run: "
        f"{new_token_requests} token request(s), {new_tokens_issued} issued, "
        f"{stats['requests_by_status'].get('401', 0)} 401 in all",
    )
    assert env.sandbox.credentials[0].client_secret == new_secret
    # The held request met the revoked token; the renewal with the old secret was refused and the
    # task failed at once, without Airflow retries, having committed exactly the pages it was served.
    (task,) = first.get_task_instances()
    assert (task.state, task.try_number) == ("failed", 1)
    assert first_log == {"customers": ("success", 5), "jobs": ("failed", 2)}
    assert after_rotation["requests_by_status"]["401"] == 1
    assert (after_rotation["token_requests_total"], after_rotation["token_requests_issued"]) == (2, 1)
    assert after_rotation["requests_by_status"]["400"] == 1
    assert (status_after_rotation.status, status_after_rotation.secret_fingerprint) == (
        "needs_attention",
        old_fingerprint,
    )
    # The next run obtained a new token with the new secret and never presented the old one (it
    # is revoked: any use would be a second 401).
    assert second.state == "success"
    assert (new_token_requests, new_tokens_issued) == (1, 1)
    assert stats["requests_by_status"]["401"] == 1
    assert (status_at_the_end.status, status_at_the_end.secret_fingerprint) == ("ok", new_fingerprint)
    assert new_fingerprint != old_fingerprint
    # It resumed at the checkpoints: nothing lost, nothing twice, no record written twice.
    assert sum(row.records_successful for log in logs for row in log) == result.expected
    assert (result.lost, result.duplicates, result.unexpected) == (0, 0, 0)
    assert result.in_warehouse == result.expected
