"""Tenant list endpoints: paging, filters, validation, routing and licensing."""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.catalog import RESOURCES

from .helpers import assert_problem


def _visible(truth: list[dict]) -> list[dict]:
    return [row for row in truth if not row["deleted"]]


@pytest.mark.parametrize("resource", sorted(RESOURCES))
def test_paging_to_the_end_returns_every_record_that_is_not_deleted(sandbox, api, resource):
    truth = sandbox.admin.truth(api.tenant_id, resource)

    records = api.list_all(resource, pageSize=17, active="Any")

    assert [r["id"] for r in records] == [row["id"] for row in _visible(truth)]
    assert [(r["modifiedOn"], r["createdOn"], r["active"]) for r in records] == [
        (row["modifiedOn"], row["createdOn"], row["active"]) for row in _visible(truth)
    ]
    assert any(row["deleted"] for row in truth)


def test_only_active_records_by_default(sandbox, api):
    truth = sandbox.admin.truth(api.tenant_id, "customers")

    default = api.list_all("customers", pageSize=50)
    inactive = api.list_all("customers", pageSize=50, active="false")

    assert [r["id"] for r in default] == [row["id"] for row in truth if row["active"]]
    assert [r["id"] for r in inactive] == [row["id"] for row in _visible(truth) if not row["active"]]
    assert inactive


def test_page_shape_and_total(sandbox, api):
    visible = [row for row in sandbox.admin.truth(api.tenant_id, "jobs") if row["active"]]
    path = api.list_path("jobs")

    first = api.ok(path, pageSize=10)
    counted = api.ok(path, pageSize=10, page=2, includeTotal="true")
    last = api.ok(path, pageSize=10, page=(len(visible) + 9) // 10)
    beyond = api.ok(path, pageSize=10, page=100)

    assert (first["page"], first["pageSize"], first["hasMore"], first["totalCount"]) == (1, 10, True, None)
    assert len(first["data"]) == 10
    assert counted["totalCount"] == len(visible)
    assert counted["data"][0]["id"] == visible[10]["id"]
    assert last["hasMore"] is False
    assert (beyond["data"], beyond["hasMore"]) == ([], False)


def test_default_page_size_is_fifty(api):
    body = api.ok(api.list_path("locations"))

    assert (body["pageSize"], len(body["data"])) == (50, 50)


def test_records_carry_the_resource_fields(api):
    job = api.ok(api.list_path("jobs"), pageSize=1)["data"][0]
    invoice = api.ok(api.list_path("invoices"), pageSize=1)["data"][0]
    payment = api.ok(api.list_path("payments"), pageSize=1)["data"][0]
    customer = api.ok(api.list_path("customers"), pageSize=1)["data"][0]

    assert {"customerId", "locationId", "jobStatus"} <= set(job)
    assert {"total", "items", "customerId", "jobId"} <= set(invoice)
    assert invoice["items"]
    assert {"skuName", "quantity", "price", "total"} <= set(invoice["items"][0])
    assert {"amount", "invoiceId"} <= set(payment)
    assert {"street", "city", "state", "zip"} <= set(customer["address"])
    assert isinstance(customer["id"], int)
    assert customer["modifiedOn"].endswith("Z")


def test_ids_filter(sandbox, api):
    wanted = [row["id"] for row in sandbox.admin.truth(api.tenant_id, "customers") if row["active"]][5:55]

    body = api.ok(api.list_path("customers"), ids=",".join(map(str, wanted)), pageSize=100)

    assert [r["id"] for r in body["data"]] == wanted


def test_more_than_fifty_ids_is_400(sandbox, api):
    ids = [row["id"] for row in sandbox.admin.truth(api.tenant_id, "customers")][:51]

    body = assert_problem(api.get(api.list_path("customers"), ids=",".join(map(str, ids))), 400)

    assert "ids" in body["errors"]


def test_date_windows_match_the_truth(sandbox, api):
    truth = _visible(sandbox.admin.truth(api.tenant_id, "invoices"))
    modified = sorted(row["modifiedOn"] for row in truth)
    created = sorted(row["createdOn"] for row in truth)
    low, high = modified[30], modified[80]

    window = api.list_all("invoices", active="Any", modifiedOnOrAfter=low, modifiedBefore=high)
    since = api.list_all("invoices", active="Any", createdOnOrAfter=created[60])
    until = api.list_all("invoices", active="Any", createdBefore=created[60])

    assert sorted(r["id"] for r in window) == sorted(row["id"] for row in truth if low <= row["modifiedOn"] < high)
    assert len(since) + len(until) == len(truth)
    assert all(r["createdOn"] >= created[60] for r in since)


def test_sort_by_modified_on_descending(sandbox, api):
    records = api.list_all("appointments", active="Any", sort="-ModifiedOn", pageSize=40)

    stamps = [r["modifiedOn"] for r in records]
    assert stamps == sorted(stamps, reverse=True)
    assert len(records) == len(_visible(sandbox.admin.truth(api.tenant_id, "appointments")))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"pageSize": 5001}, "pageSize"),
        ({"pageSize": 0}, "pageSize"),
        ({"page": 0}, "page"),
        ({"page": "two"}, "page"),
        ({"active": "maybe"}, "active"),
        ({"includeTotal": "yes"}, "includeTotal"),
        ({"modifiedOnOrAfter": "yesterday"}, "modifiedOnOrAfter"),
        ({"ids": "1,two"}, "ids"),
        ({"sort": "+Name"}, "sort"),
    ],
)
def test_invalid_query_is_400_with_field_errors(api, params, field):
    body = assert_problem(api.get(api.list_path("customers"), **params), 400)

    assert list(body["errors"]) == [field]


def test_max_page_size_is_configurable(start_sandbox, make_api):
    api = make_api(start_sandbox(max_page_size=100))

    assert api.get(api.list_path("jobs"), pageSize=100).status_code == 200
    assert_problem(api.get(api.list_path("jobs"), pageSize=101), 400)


@pytest.mark.parametrize(
    "path",
    [
        "/jpm/v2/tenant/{tenant}/customers",
        "/crm/v2/tenant/{tenant}/widgets",
        "/settings/v2/tenant/{tenant}/export/employees",
        "/crm/v2/tenant/acme/customers",
    ],
)
def test_unknown_endpoints_are_404(api, path):
    assert_problem(api.get(path.format(tenant=api.tenant_id)), 404)


def test_unlicensed_module_is_403(api2):
    assert_problem(api2.get(api2.list_path("invoices")), 403)
    assert_problem(api2.get(api2.export_path("payments")), 403)
    assert api2.get(api2.list_path("customers")).status_code == 200


def test_licence_can_be_withdrawn_at_run_time(sandbox, api):
    sandbox.admin.set_faults(unlicensed_modules={str(api.tenant_id): ["jpm"]})

    assert_problem(api.get(api.list_path("jobs")), 403)
    assert api.get(api.list_path("customers")).status_code == 200
    sandbox.admin.set_faults(unlicensed_modules={})
    assert api.get(api.list_path("jobs")).status_code == 200
