"""The /_sandbox/ control and truth endpoints: stats, reset, mutate, clock, config."""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.sandbox import SandboxAdminError


def test_stats_count_requests_by_endpoint_status_and_tenant(sandbox, api, api2):
    api.get(api.list_path("customers"))
    api.get(api.export_path("jobs"))
    api.get(api.list_path("jobs"), headers={})
    api2.get(api2.list_path("invoices"))

    stats = sandbox.admin.stats()

    assert stats["requests_total"] == 6
    assert stats["requests_by_endpoint"] == {"export": 1, "list": 3, "token": 2}
    assert stats["requests_by_resource"] == {"export/jobs": 1, "list/customers": 1, "list/invoices": 1, "list/jobs": 1}
    assert stats["requests_by_status"] == {"200": 4, "401": 1, "403": 1}
    assert stats["requests_by_tenant"] == {"1001": 3, "1002": 1}
    assert (stats["token_requests_total"], stats["token_requests_issued"]) == (2, 2)
    assert stats["faults_injected"] == {}


def test_reset_restores_data_stats_faults_clock_and_tokens(sandbox, api):
    truth = sandbox.admin.truth(1001, "customers")
    start_faults = sandbox.admin.faults()
    sandbox.admin.mutate(1001, "customers", "delete", count=10)
    sandbox.admin.set_faults("chaos")
    sandbox.admin.advance_clock(100)

    sandbox.admin.reset()

    assert sandbox.admin.truth(1001, "customers") == truth
    assert sandbox.admin.stats()["requests_total"] == 0
    assert sandbox.admin.faults() == start_faults
    assert sandbox.admin.config()["clock"]["offset"] == 0
    assert api.get(api.list_path("customers")).status_code == 401


def test_faults_at_start_come_back_after_reset(start_sandbox):
    sandbox = start_sandbox(faults="outage", fault_overrides={"outage_seconds": 30})
    sandbox.admin.set_faults("none")

    sandbox.admin.reset()

    faults = sandbox.admin.faults()
    assert (faults["profile"], faults["outage_seconds"], faults["outage_remaining"]) == ("outage", 30, 30)


def test_mutate_reports_what_changed(sandbox):
    before = {row["id"]: row for row in sandbox.admin.truth(1001, "locations")}
    target = next(row for row in before.values() if row["active"])

    result = sandbox.admin.mutate(1001, "locations", "deactivate", ids=[target["id"]])
    created = sandbox.admin.mutate(1001, "locations", "create", count=2)["changed"]

    (changed,) = result["changed"]
    assert (changed["id"], changed["active"], changed["deleted"]) == (target["id"], False, False)
    assert changed["modifiedOn"] > target["modifiedOn"]
    assert changed["modifiedOn"] == sandbox.admin.config()["clock"]["now"]
    assert all(row["id"] > max(before) and row["active"] for row in created)
    assert len(sandbox.admin.truth(1001, "locations")) == len(before) + 2


def test_modify_keeps_the_links_of_a_record(sandbox, api):
    job = api.ok(api.list_path("jobs"), pageSize=1)["data"][0]

    sandbox.admin.mutate(1001, "jobs", "modify", ids=[job["id"]])

    modified = api.ok(api.list_path("jobs"), ids=str(job["id"]))["data"][0]
    assert (modified["customerId"], modified["locationId"]) == (job["customerId"], job["locationId"])
    assert modified["modifiedOn"] > job["modifiedOn"]


@pytest.mark.parametrize(
    ("arguments", "status"),
    [
        ({"action": "modify", "ids": [1]}, "400"),
        ({"action": "modify"}, "400"),
        ({"action": "modify", "ids": [1], "count": 1}, "400"),
        ({"action": "create", "ids": [1]}, "400"),
        ({"action": "delete", "count": 10_000}, "400"),
        ({"action": "explode", "count": 1}, "400"),
        ({"action": "modify", "count": 1, "resource": "widgets"}, "404"),
        ({"action": "modify", "count": 1, "tenant": 9999}, "404"),
    ],
)
def test_impossible_mutations_are_refused(sandbox, arguments, status):
    call = {"tenant": 1001, "resource": "customers", **arguments}

    with pytest.raises(SandboxAdminError, match=status):
        sandbox.admin.mutate(**call)


def test_a_deleted_record_cannot_be_changed_again(sandbox):
    (deleted,) = sandbox.admin.mutate(1001, "payments", "delete", count=1)["changed"]

    with pytest.raises(SandboxAdminError, match="deleted"):
        sandbox.admin.mutate(1001, "payments", "modify", ids=[deleted["id"]])


def test_truth_of_unknown_resource_is_404(sandbox):
    with pytest.raises(SandboxAdminError, match="404"):
        sandbox.admin.truth(1001, "widgets")


def test_clock_only_moves_forward(sandbox):
    before = sandbox.admin.config()["clock"]

    after = sandbox.admin.advance_clock(90)

    assert after["offset"] == 90
    assert after["now"] > before["now"]
    with pytest.raises(SandboxAdminError, match="400"):
        sandbox.admin.advance_clock(-1)


def test_config_tells_settings_and_credentials(sandbox):
    config = sandbox.admin.config()

    assert (config["tenants"], config["records"], config["seed"]) == (2, 120, 7)
    assert config["unlicensed_modules"] == {"1002": ["accounting"]}
    assert config["app_key"] == sandbox.credentials[0].app_key
    assert [c["client_id"] for c in config["credentials"]] == [c.client_id for c in sandbox.credentials]
