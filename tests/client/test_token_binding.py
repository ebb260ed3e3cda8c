"""A cached token is used only by a caller holding the secrets that obtained it.

The token cache in Redis is encrypted with one deployment-wide key (Airflow's ``[core] fernet_key``
in production), so encryption alone does not tell a right secret from a wrong one: the cache key
is bound to a keyed fingerprint of the client secret and app key.
"""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.fernet import Fernet, MultiFernet

from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.errors import InvalidCredentialsError
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from tests.helpers import credentials_for, set_connection

# One key for everybody, as Airflow's [core] fernet_key is: any process can decrypt any token.
DEPLOYMENT_KEY = MultiFernet([Fernet(Fernet.generate_key())])


def token_calls(sandbox) -> tuple[int, int]:
    """(requests to the token endpoint, tokens issued)."""
    stats = sandbox.admin.stats()
    return stats["token_requests_total"], stats["token_requests_issued"]


def manager(credentials, redis_client, key_prefix) -> TokenManager:
    return TokenManager(credentials, redis_client, namespace=key_prefix, fernet=DEPLOYMENT_KEY)


def test_wrong_secret_is_refused_while_a_good_token_is_cached(sandbox, redis_client, key_prefix):
    good = credentials_for(sandbox)
    assert manager(good, redis_client, key_prefix).get_token()
    assert token_calls(sandbox) == (1, 1)

    wrong = dataclasses.replace(good, client_secret="not-the-secret")
    with pytest.raises(InvalidCredentialsError):
        manager(wrong, redis_client, key_prefix).get_token()

    assert token_calls(sandbox) == (2, 1)


def test_a_wrong_secret_asks_the_token_endpoint_once_for_every_worker(sandbox, redis_client, key_prefix):
    good = credentials_for(sandbox)
    manager(good, redis_client, key_prefix).get_token()
    wrong = dataclasses.replace(good, client_secret="not-the-secret")

    for _ in range(3):
        with pytest.raises(InvalidCredentialsError):
            manager(wrong, redis_client, key_prefix).get_token()

    assert token_calls(sandbox) == (2, 1)
    # Another wrong secret is another fingerprint: it is asked about, once.
    with pytest.raises(InvalidCredentialsError):
        manager(dataclasses.replace(good, client_secret="another-wrong"), redis_client, key_prefix).get_token()
    assert token_calls(sandbox) == (3, 1)
    # The good secret still uses its cached token.
    assert manager(good, redis_client, key_prefix).get_token()
    assert token_calls(sandbox) == (3, 1)


def test_a_changed_app_key_does_not_reuse_the_token(sandbox, redis_client, key_prefix):
    good = credentials_for(sandbox)
    first = manager(good, redis_client, key_prefix).get_token()

    other_key = dataclasses.replace(good, app_key="another-app-key")
    second = manager(other_key, redis_client, key_prefix).get_token()

    assert second != first
    assert token_calls(sandbox) == (2, 2)


def test_fingerprint_is_keyed_and_changes_with_either_secret(sandbox):
    good = credentials_for(sandbox)
    fingerprints = {
        good.secret_fingerprint,
        dataclasses.replace(good, client_secret="x").secret_fingerprint,
        dataclasses.replace(good, app_key="x").secret_fingerprint,
    }
    assert len(fingerprints) == 3
    assert good.client_secret not in good.secret_fingerprint
    assert good.secret_fingerprint == credentials_for(sandbox).secret_fingerprint


def servicetitan_connection(monkeypatch, sandbox, conn_id: str, secret: str) -> str:
    cred = sandbox.credentials[0]
    set_connection(
        monkeypatch,
        conn_id,
        conn_type="servicetitan",
        login=cred.client_id,
        password=secret,
        extra={
            "app_key": cred.app_key,
            "tenant_id": cred.tenant_id,
            "environment": "integration",
            "auth_url": sandbox.token_url,
            "api_url": sandbox.base_url,
        },
    )
    return conn_id


def test_connection_test_button_refuses_a_wrong_secret_after_a_good_test(
    monkeypatch, sandbox, redis_connection, key_prefix
):
    good = servicetitan_connection(monkeypatch, sandbox, "st_good", sandbox.credentials[0].client_secret)
    ok, message = ServiceTitanHook(good, redis_connection, namespace=key_prefix).test_connection()
    assert ok, message

    # The same connection with its password changed to a wrong one (the Test button's temporary copy).
    wrong = servicetitan_connection(monkeypatch, sandbox, "st_good", "a-wrong-secret")
    ok, message = ServiceTitanHook(wrong, redis_connection, namespace=key_prefix).test_connection()

    assert not ok
    assert message.startswith("InvalidCredentialsError")
    assert "a-wrong-secret" not in message
    assert token_calls(sandbox) == (2, 1)
