"""Rotating a tenant's client secret: the old secret refused, the new one accepted, tokens kept or revoked."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_servicetitan.sandbox import SandboxAdminError

from .helpers import Api, assert_problem


def _authenticate(api: Api, client_secret: str) -> None:
    """Give ``api`` a token obtained with ``client_secret`` (its credential holds the seed secret)."""
    response = api.request_token(client_secret=client_secret)
    assert response.status_code == 200, response.text
    api.token = response.json()["access_token"]


def test_after_a_rotation_the_old_secret_is_refused_and_the_new_one_accepted(sandbox, make_api):
    api = make_api(sandbox, authenticated=False)
    old_secret = api.credential.client_secret

    new_secret = sandbox.admin.rotate_secret(api.tenant_id)

    assert new_secret != old_secret
    assert new_secret.startswith("cs1.")
    assert assert_problem(api.request_token(), 400)["error"] == "invalid_client"
    assert api.request_token(client_secret=new_secret).status_code == 200
    stats = sandbox.admin.stats()
    assert (stats["token_requests_total"], stats["token_requests_issued"]) == (2, 1)


def test_the_other_tenants_keep_their_secret(sandbox, make_api):
    other = make_api(sandbox, 1, authenticated=False)

    sandbox.admin.rotate_secret(1001)

    assert other.request_token().status_code == 200
    assert sandbox.credentials[1] == other.credential


def test_credentials_and_config_show_the_new_secret(sandbox):
    before = sandbox.credentials[0]

    new_secret = sandbox.admin.rotate_secret(before.tenant_id)

    after = sandbox.credentials[0]
    assert (after.tenant_id, after.client_id, after.app_key) == (before.tenant_id, before.client_id, before.app_key)
    assert after.client_secret == new_secret
    assert sandbox.admin.config()["credentials"][0]["client_secret"] == new_secret


def test_tokens_issued_before_stay_valid_until_they_expire(sandbox, api):
    path = api.list_path("customers")

    new_secret = sandbox.admin.rotate_secret(api.tenant_id)

    assert api.get(path).status_code == 200
    sandbox.admin.advance_clock(900)
    assert_problem(api.get(path), 401)
    assert_problem(api.request_token(), 400)
    _authenticate(api, new_secret)
    assert api.get(path).status_code == 200


def test_revoke_tokens_invalidates_the_tokens_of_that_client_only(sandbox, api, api2):
    path, other_path = api.list_path("customers"), api2.list_path("customers")

    new_secret = sandbox.admin.rotate_secret(api.tenant_id, revoke_tokens=True)

    assert_problem(api.get(path), 401)
    assert api2.get(other_path).status_code == 200
    _authenticate(api, new_secret)
    assert api.get(path).status_code == 200


def test_the_endpoint_answers_the_new_credential_and_the_tokens_revoked(sandbox, make_api):
    for _ in range(2):
        make_api(sandbox)
    url = f"{sandbox.base_url}/_sandbox/credentials/1001/rotate"

    kept = requests.post(url, timeout=10)  # no body: revoke_tokens is false
    revoked = requests.post(url, json={"revoke_tokens": True}, timeout=10)
    invalid = requests.post(url, json={"revoke_tokens": "perhaps"}, timeout=10)

    assert kept.status_code == revoked.status_code == 200
    assert kept.json()["revoked_tokens"] == 0
    body = revoked.json()
    assert body == {
        "tenant_id": 1001,
        "client_id": sandbox.credentials[0].client_id,
        "client_secret": sandbox.credentials[0].client_secret,
        "revoked_tokens": 2,
    }
    assert body["client_secret"] != kept.json()["client_secret"]
    assert "revoke_tokens" in assert_problem(invalid, 400)["errors"]


def test_rotated_secrets_come_from_the_seed(sandbox, start_sandbox):
    seed_secret = sandbox.credentials[0].client_secret
    first, second = (sandbox.admin.rotate_secret(1001) for _ in range(2))

    sandbox.admin.reset()

    assert sandbox.credentials[0].client_secret == seed_secret
    assert len({seed_secret, first, second}) == 3
    assert [sandbox.admin.rotate_secret(1001) for _ in range(2)] == [first, second]
    assert start_sandbox().admin.rotate_secret(1001) == first
    assert start_sandbox(seed=8).admin.rotate_secret(1001) not in {first, second}


def test_reset_brings_the_seed_secret_back(sandbox, make_api):
    api = make_api(sandbox, authenticated=False)
    new_secret = sandbox.admin.rotate_secret(api.tenant_id)

    sandbox.admin.reset()

    assert api.request_token().status_code == 200
    assert assert_problem(api.request_token(client_secret=new_secret), 400)["error"] == "invalid_client"


@pytest.mark.parametrize("tenant", [9999, 1000, 1003])
def test_rotating_an_unknown_tenant_is_404(sandbox, tenant):
    before = sandbox.credentials

    with pytest.raises(SandboxAdminError, match="404"):
        sandbox.admin.rotate_secret(tenant)

    assert sandbox.credentials == before
