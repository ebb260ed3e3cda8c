"""Smoke tests of real Airflow services: the provider's DAG triggered through the REST API syncs two
credentials exactly; and the harness's own helpers (mapped instances, Clear, logs, deferral, users,
connection test) on a probe DAG that does not depend on the provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.dags.st_e2e_probe import FAIL_VARIABLE, FAILURE_MARKER
from tests.e2e.session import DAG_FILE, DAG_ID, SERVICETITAN_CONN_TYPE, E2ESession

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

PROBE_FILE = Path(__file__).parent / "dags" / "st_e2e_probe.py"
PROBE_ID = "st_e2e_probe"


def test_triggered_run_syncs_two_credentials_exactly(airflow_services: E2ESession) -> None:
    rest = airflow_services.rest
    airflow_services.ready_dag(DAG_ID, DAG_FILE)
    chosen = airflow_services.credentials[:2]
    third_before = airflow_services.audit(2).in_warehouse

    run_id = rest.trigger(DAG_ID, {"connections": chosen})
    state = rest.wait_for_run(DAG_ID, run_id, timeout=600, fail_on_task_states={"up_for_retry", "failed"})

    # Only the DAG id is relied on: its task ids (a mapped task group) may change.
    states = rest.task_states(DAG_ID, run_id)
    assert state == "success", f"{states}\n{rest.failure_logs(DAG_ID, run_id)}"
    assert not {"failed", "upstream_failed"} & set(states.values()), states
    for index in range(len(chosen)):
        result = airflow_services.audit(index)
        assert airflow_services.matches_truth(index), (chosen[index], result)
    # The run synced the credentials it was given, not the third one of the sandbox.
    assert airflow_services.audit(2).in_warehouse == third_before


def test_failed_mapped_instance_cleared_after_a_fix_succeeds(airflow_services: E2ESession) -> None:
    rest = airflow_services.rest
    rest.set_variable(FAIL_VARIABLE, [1])
    airflow_services.install_dag(PROBE_FILE, PROBE_ID)

    run_id = rest.trigger(PROBE_ID)
    deferred = rest.wait_for_task_state(PROBE_ID, run_id, "wait", {"deferred"})
    rest.wait_for_run(PROBE_ID, run_id)

    states = rest.task_states(PROBE_ID, run_id)
    assert deferred["state"] == "deferred"
    assert states == {
        "items": "success",
        ("flaky", 0): "success",
        ("flaky", 1): "failed",
        ("flaky", 2): "success",
        "done": "success",
        "wait": "success",
    }
    assert FAILURE_MARKER in rest.task_log(PROBE_ID, run_id, "flaky", 1, map_index=1)

    rest.set_variable(FAIL_VARIABLE, [])
    # Not only failed ones: the downstream ``done`` (which succeeded) re-runs too, after the fixed item.
    cleared = rest.clear(PROBE_ID, run_id, [("flaky", 1)], only_failed=False)
    assert {(ti["task_id"], ti["map_index"]) for ti in cleared} == {("flaky", 1), ("done", -1)}
    fixed = rest.wait_for_task_state(PROBE_ID, run_id, ("flaky", 1), {"success", "failed"})
    assert (fixed["state"], fixed["try_number"]) == ("success", 2)
    assert rest.wait_for_run(PROBE_ID, run_id) == "success"
    rerun = {ti["task_id"]: ti["try_number"] for ti in rest.task_instances(PROBE_ID, run_id) if ti["map_index"] == -1}
    assert rerun == {"items": 1, "done": 2, "wait": 1}


def test_viewer_reads_but_cannot_trigger(airflow_services: E2ESession) -> None:
    airflow_services.install_dag(PROBE_FILE, PROBE_ID)
    viewer = airflow_services.login("viewer")
    try:
        assert viewer.request("GET", f"/api/v2/dags/{PROBE_ID}").status_code == 200
        refused = viewer.request("POST", f"/api/v2/dags/{PROBE_ID}/dagRuns", json={"logical_date": None, "conf": {}})
        assert refused.status_code == 403
    finally:
        viewer.close()


def test_connection_test_reaches_the_sandbox(airflow_services: E2ESession) -> None:
    rest = airflow_services.rest
    fields = airflow_services.connection_fields(0)

    good = rest.test_connection("st_e2e_check", SERVICETITAN_CONN_TYPE, **fields)
    bad = rest.test_connection("st_e2e_check", SERVICETITAN_CONN_TYPE, **{**fields, "password": "not-the-secret"})

    assert good["status"] is True, good
    assert bad["status"] is False, bad
    assert "not-the-secret" not in bad["message"]
