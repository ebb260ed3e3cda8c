"""What an Airflow user sees, through real services: a failed credential fails the run, an open circuit
defers the task (no worker slot), a Clear after the fix brings the data at once, and a downstream DAG
runs on the asset events of a sync."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import redis

from tests.e2e.rest import AirflowRest
from tests.e2e.session import DAG_FILE, DAG_ID, REDIS_URL, SERVICETITAN_CONN_TYPE, E2ESession

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SYNC, RECOVER, VERDICT = "credential.sync", "credential.recover", "all_credentials_synced"
DOWNSTREAM_ID = "servicetitan_downstream_example"
DOWNSTREAM_FILE = "servicetitan_downstream_example.py"
# Opens on the second failure and stays open ten minutes: only a person's Clear gets a probe sooner.
LONG_OPEN_BREAKER = {"failure_threshold": 2, "minimum_calls": 2, "open_seconds": 600, "max_open_seconds": 600}
QUICK_RETRIES = {"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.05}


def add_connection(session: E2ESession, conn_id: str, index: int, *, password: str | None = None, **extra: Any) -> str:
    """A ``servicetitan`` connection to sandbox credential ``index``, with a secret or extra of the test's own."""
    fields = session.connection_fields(index)
    fields["extra"] = {**fields["extra"], **extra}
    if password is not None:
        fields["password"] = password
    session.rest.create_connection(conn_id, SERVICETITAN_CONN_TYPE, **fields)
    return conn_id


def alert_titles(session: E2ESession, conn_id: str) -> list[str]:
    """The headlines' kinds of the alerts the webhook received about ``conn_id``, in order
    (a headline reads ``*[ServiceTitan] <kind>: <connection id>[ (tenant <id>)]*``)."""
    headline = re.compile(rf"^\*\[ServiceTitan\] (?P<kind>[^:]+): {re.escape(conn_id)}( \(tenant \d+\))?\*$")
    found = (headline.match(text.split("\n", 1)[0]) for text in session.alerts.texts)
    return [match["kind"] for match in found if match]


def downstream_runs(session: E2ESession) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = session.rest.call("GET", f"/api/v2/dags/{DOWNSTREAM_ID}/dagRuns")["dag_runs"]
    return runs


def wait_for_downstream_runs(session: E2ESession, *, after: int, timeout: float = 120) -> list[dict[str, Any]]:
    """The runs of the downstream DAG beyond the first ``after``, once there are any."""
    deadline = time.monotonic() + timeout
    while len(runs := downstream_runs(session)) == after:
        assert time.monotonic() < deadline, "the downstream DAG was not triggered by the sync's asset events"
        time.sleep(1)
    return runs[after:]


def xcom(rest: AirflowRest, dag_id: str, run_id: str, task_id: str, *, map_index: int = -1) -> Any:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    return rest.call("GET", path, params={"map_index": map_index, "deserialize": True})["value"]


def breaker_state(session: E2ESession, tenant: int) -> dict[str, str]:
    """The shared breaker of ``tenant``'s credential, read from Redis as every worker sees it."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        (key,) = client.scan_iter(match=f"{session.redis_namespace}:breaker:{{tenant-{tenant}-*}}:state", count=1000)
        fields = client.hgetall(key)
        now_seconds, micros = client.time()
    finally:
        client.close()
    return {**fields, "now": f"{now_seconds + micros / 1e6:.6f}"}


def test_a_rejected_credential_fails_the_run_and_the_other_syncs_and_feeds_downstream(
    airflow_services: E2ESession,
) -> None:
    session, rest = airflow_services, airflow_services.rest
    session.ready_dag(DAG_ID, DAG_FILE)
    session.ready_dag(DOWNSTREAM_ID, DOWNSTREAM_FILE)  # unpaused: it runs on the sync's asset events
    downstream_before = len(downstream_runs(session))
    good = session.credentials[0]
    rejected = add_connection(session, "servicetitan_e2e_rejected", 1, password="cs1.not-the-secret")

    run_id = rest.trigger(DAG_ID, {"connections": [good, rejected]})
    state = rest.wait_for_run(DAG_ID, run_id, timeout=300)

    states = rest.task_states(DAG_ID, run_id)
    assert state == "failed", states
    assert (states[(SYNC, 0)], states[(SYNC, 1)]) == ("success", "failed"), states
    # The report and both recoveries ran first; the verdict is what failed the run.
    assert (states[(RECOVER, 0)], states[(RECOVER, 1)], states["report"]) == ("success", "success", "success")
    assert states[VERDICT] == "upstream_failed"
    # One alert for the incident, none for the credential that synced, no secret in any.
    assert alert_titles(session, rejected) == ["Credential needs attention"]
    assert alert_titles(session, good) == []
    assert not any("cs1.not-the-secret" in text for text in session.alerts.texts)
    assert session.matches_truth(0), session.audit(0)
    names = {(ti["task_id"], ti["rendered_map_index"]) for ti in rest.task_instances(DAG_ID, run_id)}
    assert {(SYNC, good), (SYNC, rejected)} <= names
    # The credential that synced announced its data: the downstream DAG ran on those asset events.
    (triggered,) = wait_for_downstream_runs(session, after=downstream_before)
    assert triggered["run_type"] == "asset_triggered"
    assert rest.wait_for_run(DOWNSTREAM_ID, triggered["dag_run_id"], timeout=120) == "success"
    downstream_after_first_run = len(downstream_runs(session))
    # ...and read the run's counts from the events' extra, the same as the sync's own summary.
    arrived = xcom(rest, DOWNSTREAM_ID, triggered["dag_run_id"], "fresh_data")
    summary = xcom(rest, DAG_ID, run_id, SYNC, map_index=0)
    assert arrived == {
        f"servicetitan://{good}/{resource}": counts["records_successful"] for resource, counts in summary.items()
    }

    # A person fixes the secret and clears the failed sync with its downstream tasks (the UI's
    # default): that credential's chain, the report and the verdict run again, not the other's.
    fixed = session.connection_fields(1)
    rest.update_connection(rejected, SERVICETITAN_CONN_TYPE, **fixed)
    cleared = rest.clear(DAG_ID, run_id, [(SYNC, 1)], only_failed=False)  # as the UI's Clear sends it

    assert {(ti["task_id"], ti["map_index"]) for ti in cleared} == {
        (SYNC, 1),
        (RECOVER, 1),
        ("report", -1),
        (VERDICT, -1),
    }
    assert rest.wait_for_run(DAG_ID, run_id, timeout=300) == "success"
    states = rest.task_states(DAG_ID, run_id)
    assert (states[(SYNC, 1)], states[(RECOVER, 1)], states[VERDICT]) == ("success", "success", "success")
    assert session.matches_truth(1), session.audit(1)
    wait_for_downstream_runs(session, after=downstream_after_first_run)  # the fixed credential's data too
    assert alert_titles(session, rejected) == ["Credential needs attention", "Resolved"]


def test_an_open_circuit_defers_and_a_clear_after_the_fix_brings_the_data_at_once(
    airflow_services: E2ESession,
) -> None:
    session, rest = airflow_services, airflow_services.rest
    session.ready_dag(DAG_ID, DAG_FILE)
    tenant = session.tenant(2)  # no other test syncs it: its data comes from this test only
    conn_id = add_connection(session, "servicetitan_e2e_outage", 2, breaker=LONG_OPEN_BREAKER, retry=QUICK_RETRIES)
    session.sandbox.admin.set_faults(outage_seconds=3600, tenants=[tenant])
    try:
        run_id = rest.trigger(DAG_ID, {"connections": [conn_id]})
        # The circuit opened: the task waits in the triggerer, holding no worker slot, in its first try.
        deferred = rest.wait_for_task_state(DAG_ID, run_id, (SYNC, 0), {"deferred"}, timeout=180)
        assert deferred["try_number"] == 1
        assert rest.dag_run(DAG_ID, run_id)["state"] == "running"
    finally:
        session.sandbox.admin.set_faults("none")  # the outage is over
    opened = breaker_state(session, tenant)
    assert opened["state"] == "open"
    assert alert_titles(session, conn_id) == ["Circuit breaker opened"]

    cleared = rest.clear(DAG_ID, run_id, [(SYNC, 0)], only_failed=False)
    state = rest.wait_for_run(DAG_ID, run_id, timeout=120)

    states = rest.task_states(DAG_ID, run_id)
    assert {(ti["task_id"], ti["map_index"]) for ti in cleared} >= {(SYNC, 0), (RECOVER, 0), ("report", -1)}
    assert state == "success", states
    # The data came while the breaker would still have refused every call (on Redis's clock, the
    # breaker's own): the Clear asked it for a probe instead of waiting out its open window.
    closed = breaker_state(session, tenant)
    assert closed["state"] == "closed"
    assert float(closed["since"]) < float(opened["open_until"])
    print(f"e2e: data complete {float(closed['since']) - float(opened['now']):.1f}s after the outage ended")
    assert alert_titles(session, conn_id) == ["Circuit breaker opened", "Resolved"]
    synced = rest.wait_for_task_state(DAG_ID, run_id, (SYNC, 0), {"success"})
    assert synced["try_number"] == 2
    assert "started by a Clear, not by a retry" in rest.task_log(DAG_ID, run_id, SYNC, 2, map_index=0)
    result = session.audit(2)
    assert result.in_warehouse == result.expected > 0
    assert result.lost == result.duplicates == result.unexpected == 0
