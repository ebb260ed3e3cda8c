"""The per (app key, tenant) rate limit: 429 with Retry-After, per tenant, refilled by the clock."""

from __future__ import annotations

from .helpers import assert_problem


def test_burst_over_the_limit_is_429_with_retry_after(start_sandbox, make_api):
    sandbox = start_sandbox(rate_limit=5)
    api, other = make_api(sandbox), make_api(sandbox, 1)
    path = api.list_path("customers")
    statuses = [api.get(path).status_code for _ in range(5)]

    throttled = api.get(path)

    assert statuses == [200] * 5
    assert_problem(throttled, 429)
    retry_after = int(throttled.headers["Retry-After"])
    assert retry_after >= 1
    assert other.get(other.list_path("customers")).status_code == 200
    sandbox.admin.advance_clock(retry_after)
    assert api.get(path).status_code == 200
    assert sandbox.admin.stats()["responses_429"] == 1


def test_limit_can_be_lowered_at_run_time(sandbox, api):
    sandbox.admin.set_faults(rate_limit=2)
    path = api.list_path("jobs")

    statuses = [api.get(path).status_code for _ in range(3)]

    assert statuses == [200, 200, 429]
    sandbox.admin.set_faults(rate_limit=None)
    assert api.get(path).status_code == 200
