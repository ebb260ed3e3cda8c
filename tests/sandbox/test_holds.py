"""``hold_after_pages``: after N export pages, a tenant's requests wait until the knob changes.

Nothing here waits for time to pass: the tests wait for the sandbox to report the requests held
(``wait_for_held``), then act.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from airflow_provider_servicetitan.sandbox import SandboxAdminError, SandboxConfig, SandboxServer


def _export_page(api, bookmark: str | None = None, **kwargs) -> requests.Response:
    params = {} if bookmark is None else {"from": bookmark}
    return api.get(api.export_path("customers"), **params, **kwargs)


def _first_pages(api, count: int) -> list[dict]:
    pages, bookmark = [], None
    for _ in range(count):
        body = _export_page(api, bookmark).json()
        pages.append(body)
        bookmark = body["continueFrom"]
    return pages


@pytest.mark.parametrize(
    "release",
    [{"hold_after_pages": None}, {"profile": "none"}],
    ids=["knob-off", "profile"],
)
def test_requests_after_n_pages_are_held_until_the_knob_changes(sandbox, api, api2, release):
    expected = _first_pages(api, 3)
    sandbox.admin.set_faults(hold_after_pages=2, tenants=[api.tenant_id])
    pages = _first_pages(api, 2)

    with ThreadPoolExecutor(max_workers=2) as pool:
        third_page = pool.submit(_export_page, api, pages[-1]["continueFrom"], timeout=120)
        listing = pool.submit(api.get, api.list_path("jobs"), timeout=120)
        assert sandbox.admin.wait_for_held(2, timeout=60) == 2
        other_tenant = _export_page(api2)
        faults = sandbox.admin.faults()

        assert not third_page.done()
        assert not listing.done()
        assert other_tenant.status_code == 200
        assert faults["held_requests"] == 2
        assert faults["export_pages_served"] == {str(api.tenant_id): 2, str(api2.tenant_id): 1}

        sandbox.admin.set_faults(**release)

        assert third_page.result().json() == expected[2]
        assert listing.result().status_code == 200
    assert pages == expected[:2]
    assert sandbox.admin.wait_for_held(0, timeout=60) == 0


def test_setting_the_knob_counts_pages_afresh(sandbox, api):
    _first_pages(api, 3)
    sandbox.admin.set_faults(hold_after_pages=1)

    assert _export_page(api).status_code == 200
    assert sandbox.admin.faults()["export_pages_served"] == {str(api.tenant_id): 1}


def test_only_intact_export_pages_count(sandbox, api):
    sandbox.admin.set_faults(hold_after_pages=1, burst_429=2)
    statuses = [_export_page(api).status_code for _ in range(2)]
    sandbox.admin.set_faults(broken_json_rate=1.0)
    statuses.append(_export_page(api).status_code)
    api.get(api.list_path("customers"))

    assert statuses == [429, 429, 200]
    assert sandbox.admin.faults()["export_pages_served"] == {}


def test_a_held_request_whose_client_leaves_is_dropped_without_an_answer(sandbox, api):
    sandbox.admin.set_faults(hold_after_pages=0)

    with pytest.raises(requests.exceptions.ReadTimeout):
        _export_page(api, timeout=0.5)

    assert sandbox.admin.wait_for_held(0, timeout=60) == 0
    stats = sandbox.admin.stats()
    assert stats["requests_by_endpoint"] == {"export": 1, "token": 1}
    assert stats["requests_by_status"] == {"200": 1}  # the token's: the export was never answered
    sandbox.admin.set_faults(hold_after_pages=None)
    assert _export_page(api).status_code == 200


def test_stopping_lets_held_requests_go(make_api):
    server = SandboxServer(SandboxConfig(records=5, fault_overrides={"hold_after_pages": 0})).start()
    api = make_api(server)
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(_export_page, api, timeout=120)
        server.admin.wait_for_held(1, timeout=60)

        server.stop()

        with pytest.raises(requests.exceptions.ConnectionError):
            held.result()


def test_waiting_for_held_requests_that_never_come_fails_with_the_count(sandbox):
    with pytest.raises(SandboxAdminError, match=r"408.*0 request"):
        sandbox.admin.wait_for_held(1, timeout=0.1)


@pytest.mark.parametrize("value", [-1, 1.5, "x"])
def test_invalid_hold_after_pages_is_refused(sandbox, value):
    with pytest.raises(SandboxAdminError, match="hold_after_pages"):
        sandbox.admin.set_faults(hold_after_pages=value)
