"""Through real Airflow: a wrong secret is refused even while a good token is cached, and an invalid
connection field fails the task at once (no Airflow retries) with the credential marked by name."""

from __future__ import annotations

from contextlib import closing

import pytest

from tests.operators.test_sync import IMMEDIATE_RETRIES, RESOURCES, task_instance


@pytest.mark.parametrize("warehouse", ["sqlite"], indirect=True)
def test_a_wrong_secret_after_a_good_run_needs_attention(operator_env):
    env = operator_env()
    conn_id = env.connect(0)
    dag = env.dag()
    with dag:
        env.sync(conn_id, servicetitan_resources=RESOURCES, **IMMEDIATE_RETRIES)
    good = env.run(dag)
    assert task_instance(good, f"sync_{conn_id}").state == "success"
    tokens = env.sandbox.admin.stats()["token_requests_total"]

    env.connect(0, password="cs1.not-the-secret")
    wrong = env.run(dag)

    ti = task_instance(wrong, f"sync_{conn_id}")
    assert (ti.state, ti.try_number) == ("failed", 1)
    assert env.sandbox.admin.stats()["token_requests_total"] == tokens + 1
    with closing(env.warehouse.store()) as store:
        status = store.get_credential_status(conn_id)
    assert status.status == "needs_attention"
    assert "rejected" in status.reason


@pytest.mark.parametrize("warehouse", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("field", "change"),
    [
        pytest.param("app_key", {"app_key": "ak1.abc\r\nX-Injected: 1"}, id="app-key-crlf"),
        pytest.param("tenant_id", {"tenant_id": "\u0661\u0662"}, id="tenant-non-ascii-digits"),
        pytest.param("api_url", {"api_url": "http://"}, id="api-url-without-host"),
    ],
)
def test_an_invalid_field_fails_at_once_and_names_the_field(operator_env, field, change):
    env = operator_env()
    conn_id = env.connect(0, **change)
    dag = env.dag()
    with dag:
        env.sync(conn_id, servicetitan_resources=RESOURCES, **IMMEDIATE_RETRIES)

    run = env.run(dag)

    ti = task_instance(run, f"sync_{conn_id}")
    assert (ti.state, ti.try_number) == ("failed", 1)
    assert env.sandbox.admin.stats()["requests_total"] == 0
    with closing(env.warehouse.store()) as store:
        status = store.get_credential_status(conn_id)
    assert status.status == "needs_attention"
    assert f"field {field!r}" in status.reason
    assert "abc" not in status.reason
