"""The health plugin's JSON API in a real api-server: what it shows, who may do what, and the actions.

Admin may edit the DAG ``servicetitan_sync``; viewer may only read it; an anonymous caller may do
nothing. Every action is checked against Airflow's auth manager and lands in Airflow's audit log.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.rest import AirflowRest
from tests.e2e.services import VIEWER_USER
from tests.e2e.session import CONNECTIONS_VARIABLE, DAG_FILE, DAG_ID, E2ESession
from tests.plugins.health_setup import (
    API,
    CACHED_TOKEN,
    HOSTILE_ERROR,
    HOSTILE_REASON,
    TOKEN_SECONDS,
    HealthSandbox,
    health_sandbox,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def sandbox(airflow_services: E2ESession) -> Iterator[HealthSandbox]:
    airflow_services.ready_dag(DAG_ID, DAG_FILE)
    with health_sandbox(airflow_services, "api") as prepared:
        yield prepared


@pytest.fixture(scope="module")
def viewer(airflow_services: E2ESession) -> Iterator[AirflowRest]:
    client = airflow_services.login(VIEWER_USER)
    yield client
    client.close()


def _secrets(session: E2ESession) -> list[str]:
    return [value for cred in session.sandbox.credentials for value in (cred.client_secret, cred.app_key)]


def test_the_plugin_is_listed_with_its_app_and_view(airflow_services: E2ESession) -> None:
    plugins = airflow_services.rest.call("GET", "/api/v2/plugins")["plugins"]
    (plugin,) = [plugin for plugin in plugins if plugin["name"] == "servicetitan"]
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/servicetitan"]
    assert [view["url_route"] for view in plugin["external_views"]] == ["servicetitan-health"]
    documented = airflow_services.rest.call("GET", "/servicetitan/openapi.json")["paths"]
    assert "/api/credentials" in documented
    assert "/api/dead-letters/{dead_letter_id}/handled" in documented


def test_rows_show_status_breaker_token_syncs_and_dead_letters(
    airflow_services: E2ESession, sandbox: HealthSandbox, viewer: AirflowRest
) -> None:
    response = viewer.request("GET", f"{API}/credentials")
    assert response.status_code == 200, response.text
    payload = response.json()

    assert payload["redis"] == "ok"
    assert payload["warehouse"] == "ok"
    assert payload["can_edit"] is False
    by_id = {row["conn_id"]: row for row in payload["credentials"]}
    # Connections of the type, and the Variable's ids (the first two credentials are in both).
    assert set(airflow_services.credentials) <= set(by_id)
    assert by_id[airflow_services.credentials[0]]["sources"] == ["connection", "variable"]
    assert by_id[airflow_services.credentials[2]]["sources"] == ["connection"]

    attention = sandbox.row(payload, sandbox.attention)
    assert attention["status"]["status"] == "needs_attention"
    assert attention["status"]["reason"] == HOSTILE_REASON  # data as stored; the page renders it as text
    assert attention["status"]["since"]
    assert attention["dead_letters"]["open"] == 1
    assert attention["dead_letters"]["oldest"]
    assert HOSTILE_ERROR in attention["dead_letters"]["sample_error"]
    assert [letter["id"] for letter in attention["dead_letters"]["letters"]] == [sandbox.dead_letter_id]
    syncs = {sync["resource"]: sync for sync in attention["syncs"]}
    assert syncs["jobs"]["status"] == "interrupted"
    assert syncs["customers"]["status"] == "partial"
    assert syncs["customers"]["records_failed"] == 1
    assert attention["token"] == {"cached": False, "expires_in_seconds": None, "rejected": False}

    held = sandbox.row(payload, sandbox.open_breaker)
    assert held["breaker"]["state"] == "open"
    assert 0 < held["breaker"]["admits_in_seconds"] <= 3600
    assert attention["breaker"]["state"] == "closed"


def test_no_secret_is_in_the_answer(airflow_services: E2ESession, sandbox: HealthSandbox) -> None:
    text = airflow_services.rest.request("GET", f"{API}/credentials").text
    for secret in _secrets(airflow_services):
        assert secret not in text


def test_a_cached_token_shows_its_expiry_never_itself(airflow_services: E2ESession, sandbox: HealthSandbox) -> None:
    response = airflow_services.rest.request("GET", f"{API}/credentials/{sandbox.open_breaker}")

    token = response.json()["credential"]["token"]
    assert token["cached"] is True
    assert 0 < token["expires_in_seconds"] <= TOKEN_SECONDS
    assert CACHED_TOKEN not in response.text


def test_anonymous_callers_get_nothing(airflow_services: E2ESession, sandbox: HealthSandbox) -> None:
    with httpx.Client(base_url=airflow_services.services.base_url, timeout=30) as anonymous:
        assert anonymous.get(f"{API}/credentials").status_code == 401
        reset = anonymous.post(f"{API}/credentials/{sandbox.open_breaker}/breaker/reset", json={})
        assert reset.status_code == 401


def test_a_viewer_may_not_act(airflow_services: E2ESession, sandbox: HealthSandbox, viewer: AirflowRest) -> None:
    calls = [
        (f"{API}/credentials/{sandbox.open_breaker}/breaker/reset", {}),
        (f"{API}/credentials/{sandbox.open_breaker}/breaker/hold", {"minutes": 5}),
        (f"{API}/credentials/{sandbox.attention}/recover", {}),
        (f"{API}/dead-letters/{sandbox.dead_letter_id}/handled", {"note": "not mine to close"}),
    ]
    for path, body in calls:
        assert viewer.request("POST", path, json=body).status_code == 403, path
    payload = airflow_services.rest.call("GET", f"{API}/credentials")
    assert sandbox.row(payload, sandbox.open_breaker)["breaker"]["state"] == "open"
    assert sandbox.row(payload, sandbox.attention)["dead_letters"]["open"] == 1


def test_an_action_needs_a_json_body(airflow_services: E2ESession, sandbox: HealthSandbox) -> None:
    """A cross-site form can post, but not as JSON: such a post changes nothing."""
    rest = airflow_services.rest
    response = rest.request("POST", f"{API}/credentials/{sandbox.open_breaker}/breaker/reset", data={"x": "1"})
    assert response.status_code == 415
    assert sandbox.row(rest.call("GET", f"{API}/credentials"), sandbox.open_breaker)["breaker"]["state"] == "open"


def _audit(rest: AirflowRest, event: str) -> list[dict[str, object]]:
    logs: list[dict[str, object]] = rest.call("GET", "/api/v2/eventLogs", params={"event": event, "limit": 100})[
        "event_logs"
    ]
    return logs


def test_hold_then_reset_a_breaker_as_an_editor(airflow_services: E2ESession, sandbox: HealthSandbox) -> None:
    rest = airflow_services.rest
    conn_id = sandbox.attention

    held = rest.call("POST", f"{API}/credentials/{conn_id}/breaker/hold", json={"minutes": 5})["credential"]
    assert held["breaker"]["state"] == "open"
    assert 0 < held["breaker"]["admits_in_seconds"] <= 300
    assert sandbox.breaker(held["breaker"]["name"]).state.value == "open"

    reset = rest.call("POST", f"{API}/credentials/{conn_id}/breaker/reset", json={})["credential"]
    assert reset["breaker"]["state"] == "closed"
    assert reset["breaker"]["failures_in_window"] == 0

    holds, resets = _audit(rest, "servicetitan.breaker_hold_open"), _audit(rest, "servicetitan.breaker_reset")
    assert any(entry["owner"] == "admin" and conn_id in str(entry["extra"]) for entry in holds), holds
    assert any(entry["owner"] == "admin" and conn_id in str(entry["extra"]) for entry in resets), resets


def test_hold_rejects_a_duration_out_of_range(airflow_services: E2ESession, sandbox: HealthSandbox) -> None:
    path = f"{API}/credentials/{sandbox.attention}/breaker/hold"
    for minutes in (0, -1, 24 * 60 + 1, "soon"):
        assert airflow_services.rest.request("POST", path, json={"minutes": minutes}).status_code == 422


def test_actions_on_an_unknown_credential_are_refused(airflow_services: E2ESession, sandbox: HealthSandbox) -> None:
    rest = airflow_services.rest
    assert rest.request("POST", f"{API}/credentials/not_a_credential/breaker/reset", json={}).status_code == 404
    assert rest.request("GET", f"{API}/credentials/not_a_credential").status_code == 404
    assert rest.request("POST", f"{API}/dead-letters/987654321/handled", json={"note": "x"}).status_code == 404


def test_mark_a_dead_letter_handled_with_a_note(airflow_services: E2ESession, sandbox: HealthSandbox) -> None:
    rest = airflow_services.rest
    path = f"{API}/dead-letters/{sandbox.dead_letter_id}/handled"
    assert rest.request("POST", path, json={"note": "   "}).status_code == 422

    kept = rest.call("POST", path, json={"note": "record deleted upstream, nothing to recover"})

    assert kept["handled_by"] == "admin"
    assert kept["credential"] == sandbox.attention
    row = rest.call("GET", f"{API}/credentials/{sandbox.attention}")["credential"]
    assert row["dead_letters"]["open"] == 0
    assert sandbox.store.get_dead_letter(sandbox.dead_letter_id).resolved_at is not None  # type: ignore[union-attr]
    assert rest.request("POST", path, json={"note": "again"}).status_code == 409
    entries = _audit(rest, "servicetitan.dead_letter_handled")
    assert any(entry["owner"] == "admin" and "nothing to recover" in str(entry["extra"]) for entry in entries)


def test_recover_now_runs_the_dag_for_that_credential_and_links_its_tasks(
    airflow_services: E2ESession, sandbox: HealthSandbox
) -> None:
    """The run syncs that credential alone (here it is refused: its client id is not the sandbox's, so
    no sandbox data and no asset event comes of it); its tasks' logs are linked from the row."""
    rest = airflow_services.rest
    answer = rest.call("POST", f"{API}/credentials/{sandbox.attention}/recover", json={})
    run_id = answer["dag_run_id"]
    run = rest.dag_run(DAG_ID, run_id)
    assert run["conf"] == {"connections": [sandbox.attention]}
    assert run["triggering_user_name"] == "admin"
    entries = _audit(rest, "servicetitan.recovery_triggered")
    assert any(entry["owner"] == "admin" and run_id in str(entry["extra"]) for entry in entries)

    rest.wait_for_run(DAG_ID, run_id, timeout=600)
    row = rest.call("GET", f"{API}/credentials/{sandbox.attention}")["credential"]

    tasks = {task["task_id"]: task for task in row["latest_tasks"]}
    assert set(tasks) == {"credential.sync", "credential.recover"}
    assert {task["run_id"] for task in tasks.values()} == {run_id}
    log = rest.request("GET", tasks["credential.sync"]["log_api_url"])
    assert log.status_code == 200, log.text[:500]
    assert tasks["credential.sync"]["ui_url"].startswith(f"/dags/{DAG_ID}/runs/")


def test_variable_only_credentials_are_listed(airflow_services: E2ESession, sandbox: HealthSandbox) -> None:
    rest = airflow_services.rest
    listed = [*airflow_services.credentials[:2], "servicetitan_only_in_variable"]
    rest.set_variable(CONNECTIONS_VARIABLE, listed)
    try:
        row = rest.call("GET", f"{API}/credentials/servicetitan_only_in_variable")["credential"]
    finally:
        rest.set_variable(CONNECTIONS_VARIABLE, airflow_services.credentials[:2])
    assert row["sources"] == ["variable"]
    assert row["problem"]
    assert "cannot be read" in row["problem"]
    assert row["breaker"]["state"] == "unknown"
