"""Tokens and the checks on every API call: issue, expiry, revocation, rejections, throttling."""

from __future__ import annotations

import base64
import json

import pytest

from .helpers import assert_problem


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_token_has_the_servicetitan_shape(sandbox, make_api):
    api = make_api(sandbox, authenticated=False)

    body = api.request_token().json()

    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert set(body["scope"].split()) == {"crm", "jpm", "accounting", "settings"}
    parts = body["access_token"].split(".")
    assert len(parts) == 3
    assert all(part and "=" not in part for part in parts)
    assert _claims(body["access_token"])["tenant"] == str(api.tenant_id)


def test_token_scope_leaves_out_unlicensed_modules(sandbox, make_api):
    body = make_api(sandbox, 1, authenticated=False).request_token().json()

    assert set(body["scope"].split()) == {"crm", "jpm", "settings"}


def test_token_works_until_it_expires_on_the_sandbox_clock(sandbox, api):
    path = api.list_path("customers")
    sandbox.admin.advance_clock(899)
    assert api.get(path).status_code == 200

    sandbox.admin.advance_clock(1)

    assert_problem(api.get(path), 401)
    api.authenticate()
    assert api.get(path).status_code == 200


def test_token_lifetime_is_configurable(start_sandbox, make_api):
    sandbox = start_sandbox(token_expires_in=60)
    api = make_api(sandbox)
    assert api.request_token().json()["expires_in"] == 60

    sandbox.admin.advance_clock(60)

    assert_problem(api.get(api.list_path("jobs")), 401)


def test_revocation_invalidates_every_token_issued_so_far(sandbox, api, api2):
    assert sandbox.admin.revoke_tokens() == 2

    assert_problem(api.get(api.list_path("customers")), 401)
    assert_problem(api2.get(api2.list_path("customers")), 401)
    api.authenticate()
    assert api.get(api.list_path("customers")).status_code == 200


def test_bare_token_is_accepted(api):
    response = api.get(
        api.list_path("customers"), headers={"Authorization": api.token, "ST-App-Key": api.credential.app_key}
    )

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("authorization", "app_key"),
    [
        pytest.param(None, "right", id="no-token"),
        pytest.param("Bearer not-a-token", "right", id="bad-token"),
        pytest.param("Bearer", "right", id="empty-bearer"),
        pytest.param("right", None, id="no-app-key"),
        pytest.param("right", "ak1.wrong", id="wrong-app-key"),
    ],
)
def test_calls_without_valid_token_and_app_key_are_401(api, authorization, app_key):
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.replace("right", f"Bearer {api.token}")
    if app_key is not None:
        headers["ST-App-Key"] = app_key.replace("right", api.credential.app_key)

    assert_problem(api.get(api.list_path("customers"), headers=headers), 401)


def test_token_of_another_tenant_is_401(api, api2):
    response = api.get(api2.list_path("customers"))

    assert "tenant 1002" in assert_problem(response, 401)["detail"]


def test_every_error_has_its_own_trace_id(api):
    trace_ids = {assert_problem(api.get(api.list_path("jobs"), headers={}), 401)["traceId"] for _ in range(5)}

    assert len(trace_ids) == 5


def test_wrong_secret_is_invalid_client(sandbox, make_api):
    api = make_api(sandbox, authenticated=False)

    body = assert_problem(api.request_token(client_secret="cs1.wrong"), 400)

    assert body["error"] == "invalid_client"


def test_unknown_client_is_invalid_client(sandbox, make_api):
    api = make_api(sandbox, authenticated=False)

    body = assert_problem(api.request_token(client_id="cid.unknown"), 400)

    assert body["error"] == "invalid_client"


def test_other_grant_types_are_refused(sandbox, make_api):
    api = make_api(sandbox, authenticated=False)

    body = assert_problem(api.request_token(grant_type="password"), 400)

    assert body["error"] == "unsupported_grant_type"
    assert "grant_type" in body["errors"]


def test_token_endpoint_is_throttled_per_client(sandbox, make_api):
    api = make_api(sandbox, authenticated=False)
    other = make_api(sandbox, 1, authenticated=False)
    statuses = [api.request_token().status_code for _ in range(30)]

    throttled = api.request_token()

    assert statuses == [200] * 30
    assert_problem(throttled, 429)
    assert int(throttled.headers["Retry-After"]) >= 1
    assert other.request_token().status_code == 200
    sandbox.admin.advance_clock(int(throttled.headers["Retry-After"]))
    assert api.request_token().status_code == 200
    stats = sandbox.admin.stats()
    assert stats["token_requests_total"] == 33
    assert stats["token_requests_issued"] == 32
