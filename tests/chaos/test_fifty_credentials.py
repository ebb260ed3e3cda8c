"""Chaos row: the shipped DAG syncs 50 credentials in one run; two were just given wrong secrets
(while a token of each is still cached) and one tenant is in an outage."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from tests.chaos.audit import audit
from tests.dags.test_servicetitan_sync import load_dag_module
from tests.helpers import register

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

CREDENTIALS = 50
WRONG_SECRET = (0, 1)
IN_OUTAGE = 2
HEALTHY = [index for index in range(CREDENTIALS) if index not in (*WRONG_SECRET, IN_OUTAGE)]


def test_fifty_credentials_in_one_dag_run(chaos_row, operator_env, monkeypatch):
    env = operator_env(tenants=CREDENTIALS, records=20, export_page_size=10)
    settings = {
        "SERVICETITAN_WAREHOUSE_CONN_ID": env.warehouse.conn_id,
        "AIRFLOW__SERVICETITAN__REDIS_CONN_ID": env.redis_conn_id,
        "AIRFLOW__SERVICETITAN__REDIS_NAMESPACE": env.redis_namespace,
        "SERVICETITAN_TABLE_PREFIX": env.warehouse.table_prefix,
    }
    dag = load_dag_module(monkeypatch, settings).dag
    # The DAG's retries wait minutes; here they come back at once (the outage credential uses them).
    for task_id in ("credential.sync", "credential.recover"):
        dag.get_task(task_id).retry_delay = timedelta(0)
        dag.get_task(task_id).retry_exponential_backoff = 0
    register(dag)
    connections = [env.connect(index) for index in range(CREDENTIALS)]
    for index in WRONG_SECRET:  # a good connection Test caches a token, then the secret is changed
        ok, message = ServiceTitanHook(
            connections[index], env.redis_conn_id, namespace=env.redis_namespace
        ).test_connection()
        assert ok, message
        env.connect(index, password=f"cs1.wrong-secret-{index}")
    # A breaker that stays closed, so Airflow's retries of this credential do not wait for it to half-open.
    env.connect(IN_OUTAGE, breaker={"failure_threshold": 1000, "minimum_calls": 1000})
    env.sandbox.admin.set_faults(outage_seconds=3600, tenants=[env.tenant(IN_OUTAGE)])
    monkeypatch.setenv("AIRFLOW_VAR_SERVICETITAN_CONNECTIONS", json.dumps(connections))

    dag_run = dag.test()

    tis = {(ti.task_id, ti.map_index): ti for ti in dag_run.get_task_instances()}
    sync = {index: tis[("credential.sync", index)] for index in range(CREDENTIALS)}
    stats = env.sandbox.admin.stats()
    with env.warehouse.store() as store:
        healthy = audit(
            env.sandbox,
            store,
            [env.tenant(i) for i in HEALTHY],
            EXPORTABLE_RESOURCES,
            [connections[i] for i in HEALTHY],
        )
        unhealthy_indexes = [*WRONG_SECRET, IN_OUTAGE]
        unhealthy = audit(env.sandbox, store, [env.tenant(i) for i in unhealthy_indexes], EXPORTABLE_RESOURCES)
        status = {index: store.get_credential_status(connections[index]) for index in range(CREDENTIALS)}
        retries = sum(row.retries for row in store.get_run_log(dag_run.run_id))
    chaos_row.report(
        healthy,
        token_requests=stats["token_requests_total"],
        retries=retries,
        note=f"{len(HEALTHY)} healthy credentials; the 3 others hold {unhealthy.in_warehouse} record(s), "
        f"{unhealthy.duplicates} duplicate(s); outage credential tried {sync[IN_OUTAGE].try_number} time(s)",
    )
    assert (healthy.lost, healthy.duplicates, healthy.unexpected) == (0, 0, 0)
    assert healthy.in_warehouse == healthy.expected
    assert all(sync[index].state == "success" for index in HEALTHY)
    assert all(status[index].status == "ok" for index in HEALTHY)
    assert unhealthy.duplicates == unhealthy.unexpected == 0
    # A wrong secret is refused by ServiceTitan, not hidden by the token cached before it changed.
    for index in WRONG_SECRET:
        assert (sync[index].state, sync[index].try_number) == ("failed", 1)
        assert status[index].status == "needs_attention"
    assert stats["requests_by_status"].get("400") == len(WRONG_SECRET)
    # The tenant in outage: retried by Airflow, then failed and degraded; nothing half-written.
    assert sync[IN_OUTAGE].state == "failed"
    assert sync[IN_OUTAGE].try_number == 1 + dag.get_task("credential.sync").retries
    assert status[IN_OUTAGE].status == "degraded"
    assert unhealthy.in_warehouse == 0
    assert tis[("report", -1)].state == "success"
    # ...and the run says some credentials failed.
    assert (dag_run.state, tis[("all_credentials_synced", -1)].state) == ("failed", "upstream_failed")
