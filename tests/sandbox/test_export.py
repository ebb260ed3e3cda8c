"""Export feeds: complete, ordered, resumable, incremental, with the recent-changes delay."""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES

from .helpers import assert_problem


def _flags(records: list[dict]) -> list[tuple]:
    return sorted((r["id"], r["modifiedOn"], r["active"], r["deleted"]) for r in records)


@pytest.mark.parametrize("resource", EXPORTABLE_RESOURCES)
def test_export_to_the_end_equals_the_truth_including_inactive_and_deleted(sandbox, api, resource):
    truth = sandbox.admin.truth(api.tenant_id, resource)

    records, _ = api.export_all(resource)

    assert _flags(records) == _flags(truth)
    assert any(r["deleted"] for r in records)
    assert any(not r["active"] and not r["deleted"] for r in records)
    assert [(r["modifiedOn"], r["id"]) for r in records] == sorted((r["modifiedOn"], r["id"]) for r in records)


def test_pages_have_the_configured_size_and_a_bookmark(api):
    body = api.ok(api.export_path("customers"))

    assert (len(body["data"]), body["hasMore"]) == (25, True)
    assert body["continueFrom"]


def test_resuming_from_a_token_gives_exactly_the_rest(api):
    everything, _ = api.export_all("jobs")
    first = api.ok(api.export_path("jobs"))
    second = api.ok(api.export_path("jobs"), **{"from": first["continueFrom"]})

    rest, _ = api.export_all("jobs", **{"from": second["continueFrom"]})

    assert first["data"] + second["data"] + rest == everything


def test_caught_up_feed_is_empty_and_keeps_the_bookmark(api):
    _, bookmark = api.export_all("locations")

    body = api.ok(api.export_path("locations"), **{"from": bookmark})

    assert body == {"hasMore": False, "continueFrom": bookmark, "data": []}


def test_incremental_export_returns_exactly_the_changed_records(sandbox, api):
    _, bookmark = api.export_all("customers")
    admin = sandbox.admin
    changed = [
        *admin.mutate(api.tenant_id, "customers", "modify", count=3)["changed"],
        *admin.mutate(api.tenant_id, "customers", "create", count=2)["changed"],
        *admin.mutate(api.tenant_id, "customers", "deactivate", count=1)["changed"],
        *admin.mutate(api.tenant_id, "customers", "delete", count=1)["changed"],
    ]

    records, next_bookmark = api.export_all("customers", **{"from": bookmark})

    assert len({row["id"] for row in changed}) == 7
    assert _flags(records) == _flags(changed)
    assert api.export_all("customers", **{"from": next_bookmark})[0] == []


def test_export_shows_a_deleted_record_flagged_and_the_list_no_longer_does(sandbox, api):
    victim = api.ok(api.list_path("invoices"), pageSize=1)["data"][0]
    _, bookmark = api.export_all("invoices")

    sandbox.admin.mutate(api.tenant_id, "invoices", "delete", ids=[victim["id"]])

    records, _ = api.export_all("invoices", **{"from": bookmark})
    assert [(r["id"], r["active"], r["deleted"]) for r in records] == [(victim["id"], False, True)]
    assert api.ok(api.list_path("invoices"), ids=str(victim["id"]), active="Any")["data"] == []


def test_modified_on_or_after_returns_exactly_the_changed_records(sandbox, api):
    result = sandbox.admin.mutate(api.tenant_id, "jobs", "modify", count=4)
    since = result["changed"][0]["modifiedOn"]

    records = api.list_all("jobs", active="Any", modifiedOnOrAfter=since)

    assert sorted((r["id"], r["modifiedOn"]) for r in records) == sorted(
        (row["id"], row["modifiedOn"]) for row in result["changed"]
    )


def test_from_a_date_starts_at_records_modified_on_or_after_it(sandbox, api):
    truth = sandbox.admin.truth(api.tenant_id, "payments")

    records, _ = api.export_all("payments", **{"from": "2024-01-01"})

    assert _flags(records) == _flags([row for row in truth if row["modifiedOn"] >= "2024-01-01"])
    assert 0 < len(records) < len(truth)


@pytest.mark.parametrize("token", ["garbage!!", "c3Q6MTox", "bm90LWEtdG9rZW4"])
def test_garbage_continuation_token_is_400(api, token):
    body = assert_problem(api.get(api.export_path("customers"), **{"from": token}), 400)

    assert "from" in body["errors"]


def test_recent_changes_appear_after_the_delay_or_at_once_on_request(start_sandbox, make_api):
    sandbox = start_sandbox(recent_changes_delay=900)
    api = make_api(sandbox)
    _, bookmark = api.export_all("technicians")
    changed = sandbox.admin.mutate(api.tenant_id, "technicians", "modify", count=2)["changed"]

    hidden, _ = api.export_all("technicians", **{"from": bookmark})
    at_once, _ = api.export_all("technicians", **{"from": bookmark, "includeRecentChanges": "true"})
    sandbox.admin.advance_clock(899)
    still_hidden, _ = api.export_all("technicians", **{"from": bookmark})
    sandbox.admin.advance_clock(1)
    delayed, _ = api.authenticate().export_all("technicians", **{"from": bookmark})

    assert hidden == still_hidden == []
    assert _flags(at_once) == _flags(delayed) == _flags(changed)
