"""Fault injection: each knob does what it says, reproducibly, and only where it is aimed."""

from __future__ import annotations

import time

import pytest
import requests

from airflow_provider_servicetitan.sandbox import FAULT_KNOBS, PROFILES, SandboxAdminError, SandboxConfig

from .helpers import assert_problem


def _statuses(api, count: int, resource: str = "customers") -> list[int]:
    return [api.get(api.list_path(resource)).status_code for _ in range(count)]


def _malformed(record: dict) -> bool:
    return not isinstance(record.get("id"), int) or record["modifiedOn"] == "not-a-date"


@pytest.mark.parametrize(
    ("knob", "statuses", "title"),
    [
        ("error_rate", {500, 502, 503}, None),
        ("maintenance_rate", {409}, "Service is suspended for maintenance"),
        ("burst_rate", {429}, None),
    ],
)
def test_rate_one_fails_every_call_and_rate_zero_none(sandbox, api, knob, statuses, title):
    sandbox.admin.set_faults(**{knob: 1.0})
    failed = [api.get(api.list_path("customers")) for _ in range(12)]
    sandbox.admin.set_faults(**{knob: 0.0})

    assert {r.status_code for r in failed} <= statuses
    for response in failed:
        body = assert_problem(response, response.status_code)
        assert title is None or body["title"] == title
    assert _statuses(api, 5) == [200] * 5


def test_server_errors_use_all_three_statuses_and_are_counted(sandbox, api):
    sandbox.admin.set_faults(error_rate=1.0)

    statuses = _statuses(api, 30)

    assert set(statuses) == {500, 502, 503}
    assert sandbox.admin.stats()["faults_injected"] == {"error_5xx": 30}


def test_same_fault_seed_replays_the_same_failures(sandbox, api):
    sandbox.admin.set_faults(error_rate=0.3, fault_seed=11)
    first = _statuses(api, 40)
    sandbox.admin.set_faults(error_rate=0.3, fault_seed=11)
    replay = _statuses(api, 40)
    sandbox.admin.set_faults(error_rate=0.3, fault_seed=12)
    other_seed = _statuses(api, 40)

    assert first == replay
    assert other_seed != first
    failures = sum(status != 200 for status in first)
    assert 0 < failures < 40
    assert sandbox.admin.stats()["faults_injected"]["error_5xx"] == 2 * failures + sum(s != 200 for s in other_seed)


def test_a_tenant_fault_stream_ignores_other_tenants(sandbox, api, api2):
    sandbox.admin.set_faults(error_rate=0.5, fault_seed=3)
    alone = _statuses(api, 20)
    sandbox.admin.set_faults(error_rate=0.5, fault_seed=3)
    interleaved = []
    for _ in range(20):
        interleaved.append(api.get(api.list_path("customers")).status_code)
        api2.get(api2.list_path("customers"))

    assert interleaved == alone


def test_faults_can_be_aimed_at_one_tenant(sandbox, api, api2):
    sandbox.admin.set_faults(error_rate=1.0, tenants=[api2.tenant_id])

    assert _statuses(api, 10) == [200] * 10
    assert all(status >= 500 for status in _statuses(api2, 10))
    assert sandbox.admin.stats()["requests_by_tenant"] == {"1001": 10, "1002": 10}


def test_fixed_latency_delays_the_answer(sandbox, api):
    sandbox.admin.set_faults(latency=0.3)

    started = time.monotonic()
    response = api.get(api.list_path("customers"))

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3
    assert sandbox.admin.stats()["faults_injected"] == {"latency": 1}


def test_random_latency_comes_on_top_of_the_fixed_latency(sandbox, api):
    sandbox.admin.set_faults(latency=0.05, latency_jitter=0.1)

    durations = []
    for _ in range(5):
        started = time.monotonic()
        assert api.get(api.list_path("customers")).status_code == 200
        durations.append(time.monotonic() - started)

    assert min(durations) >= 0.05
    assert sandbox.admin.stats()["faults_injected"] == {"latency": 5}


def test_timeout_holds_the_request_past_the_client_timeout_without_blocking_the_server(sandbox, api, api2):
    sandbox.admin.set_faults(timeout_rate=1.0, timeout_hold=60, tenants=[api.tenant_id])

    with pytest.raises(requests.exceptions.ReadTimeout):
        api.get(api.list_path("customers"), timeout=0.3)

    assert api2.get(api2.list_path("customers"), timeout=5).status_code == 200
    assert sandbox.admin.stats()["faults_injected"] == {"timeout": 1}


def test_a_held_request_ends_with_504_once_the_hold_is_over(sandbox, api):
    sandbox.admin.set_faults(timeout_rate=1.0, timeout_hold=0.2)

    assert_problem(api.get(api.list_path("customers"), timeout=10), 504)


def test_connection_reset_raises_connection_error(sandbox, api):
    sandbox.admin.set_faults(reset_rate=1.0)

    with pytest.raises(requests.exceptions.ConnectionError):
        api.get(api.list_path("customers"))

    sandbox.admin.set_faults(reset_rate=0.0)
    assert api.get(api.list_path("customers")).status_code == 200


def test_outage_window_ends_when_the_clock_moves_past_it(sandbox, api, api2):
    sandbox.admin.set_faults(outage_seconds=60)
    assert_problem(api.get(api.list_path("customers")), 503)
    assert_problem(api2.get(api2.list_path("jobs")), 503)

    sandbox.admin.advance_clock(59)
    assert_problem(api.get(api.list_path("customers")), 503)
    assert sandbox.admin.faults()["outage_remaining"] == 1

    sandbox.admin.advance_clock(1)
    assert api.get(api.list_path("customers")).status_code == 200


def test_forced_burst_answers_429_the_next_n_calls(sandbox, api):
    sandbox.admin.set_faults(burst_429=3, burst_429_retry_after=7)

    responses = [api.get(api.list_path("customers")) for _ in range(4)]

    assert [r.status_code for r in responses] == [429, 429, 429, 200]
    assert [r.headers.get("Retry-After") for r in responses[:3]] == ["7", "7", "7"]
    assert sandbox.admin.stats()["responses_429"] == 3


def test_revoked_tokens_are_rejected(sandbox, api):
    sandbox.admin.revoke_tokens()

    assert_problem(api.get(api.list_path("customers")), 401)


def test_malformed_records_are_stable_and_served_intact_once_the_knob_is_off(sandbox, api):
    truth = [row for row in sandbox.admin.truth(api.tenant_id, "customers") if not row["deleted"]]
    sandbox.admin.set_faults(malformed_rate=0.3)

    served = api.list_all("customers", active="Any", pageSize=40)
    again = api.list_all("customers", active="Any", pageSize=40)
    bad = [r for r in served if _malformed(r)]
    sandbox.admin.set_faults(malformed_rate=0.0)
    fixed = api.list_all("customers", active="Any", pageSize=40)

    assert served == again
    assert 0 < len(bad) < len(truth)
    assert any("id" not in r for r in bad)
    assert any(isinstance(r.get("id"), str) for r in bad)
    assert any(r["modifiedOn"] == "not-a-date" for r in bad)
    assert not any(_malformed(r) for r in fixed)
    assert [(r["id"], r["modifiedOn"]) for r in fixed] == [(row["id"], row["modifiedOn"]) for row in truth]
    good_ids = {r["id"] for r in served if not _malformed(r)}
    assert [r for r in fixed if r["id"] in good_ids] == [r for r in served if not _malformed(r)]


def test_malformed_records_reach_the_export_feed_too(sandbox, api):
    sandbox.admin.set_faults(malformed_rate=1.0)

    records, _ = api.export_all("jobs")

    assert records
    assert all(_malformed(r) for r in records)


def test_broken_json_page_is_a_200_that_does_not_parse(sandbox, api):
    sandbox.admin.set_faults(broken_json_rate=1.0)

    response = api.get(api.list_path("customers"))

    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    with pytest.raises(requests.exceptions.JSONDecodeError):
        response.json()


def test_truncated_page_breaks_the_read(sandbox, api):
    sandbox.admin.set_faults(truncated_rate=1.0)

    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        api.get(api.list_path("customers"))

    assert sandbox.admin.stats()["faults_injected"] == {"truncated": 1}


def test_body_faults_leave_error_answers_alone(sandbox, api):
    sandbox.admin.set_faults(truncated_rate=1.0)

    assert_problem(api.get(api.list_path("customers"), pageSize=0), 400)


def test_token_endpoint_faults_are_a_separate_knob(sandbox, api, make_api):
    sandbox.admin.set_faults(token_error_rate=1.0)
    fresh = make_api(sandbox, authenticated=False)

    assert fresh.request_token().status_code in {500, 502, 503}
    assert api.get(api.list_path("customers")).status_code == 200


def test_admin_endpoints_are_never_faulted(sandbox):
    sandbox.admin.set_faults(outage_seconds=600, reset_rate=1.0, error_rate=1.0)

    assert sandbox.admin.stats()["requests_total"] == 0


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_load_at_run_time_and_at_start(start_sandbox, sandbox, profile):
    active = sandbox.admin.set_faults(profile)
    started = start_sandbox(faults=profile).admin.faults()

    expected = PROFILES[profile].to_dict()
    assert {knob: active[knob] for knob in FAULT_KNOBS} == expected
    assert {knob: started[knob] for knob in FAULT_KNOBS} == expected
    assert active["profile"] == started["profile"] == profile


def test_chaos_turns_on_every_kind_of_fault():
    chaos = PROFILES["chaos"].to_dict()

    off = [knob for knob in FAULT_KNOBS if knob.endswith("_rate") and not chaos[knob]]

    assert off == []
    assert chaos["latency_jitter"] > 0


@pytest.mark.parametrize(
    "knobs",
    [{"error_rate": 2}, {"no_such_knob": 1}, {"burst_size": 0}, {"tenants": "x"}, {"unlicensed_modules": "1:nope"}],
)
def test_invalid_knobs_are_refused(sandbox, knobs):
    with pytest.raises(SandboxAdminError, match="400"):
        sandbox.admin.set_faults(**knobs)


def test_invalid_start_faults_are_refused():
    with pytest.raises(ValueError, match="unknown fault profile"):
        SandboxConfig(faults="apocalypse")
    with pytest.raises(ValueError, match="error_rate"):
        SandboxConfig(fault_overrides={"error_rate": "often"})


def test_start_knobs_accept_strings_as_on_the_command_line(start_sandbox):
    sandbox = start_sandbox(
        faults="flaky", fault_overrides={"error_rate": "0.5", "tenants": "1001,1002", "unlicensed_modules": "1001:crm"}
    )

    faults = sandbox.admin.faults()

    assert (faults["error_rate"], faults["tenants"], faults["reset_rate"]) == (0.5, [1001, 1002], 0.02)
    assert faults["unlicensed_modules"] == {"1001": ["crm"]}
