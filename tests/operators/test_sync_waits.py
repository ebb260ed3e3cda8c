"""How the sync operator waits for ServiceTitan without holding a worker, and how a person makes it try now.

``dag.test()`` runs a deferred task's trigger in the test process, then resumes the task: the same
path as the triggerer of a real deployment (tests/e2e runs that one).
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.operators.sync import ServiceTitanSyncOperator
from airflow_provider_servicetitan.resilience.breaker import BreakerState, CircuitBreaker
from airflow_provider_servicetitan.triggers.breaker import BreakerProbeTrigger

RESOURCES = ["customers", "jobs"]
WAITED = "in the triggerer (no worker slot)"


def breaker_of(env, conn_id: str) -> CircuitBreaker:
    """The credential's shared breaker, as every worker of the deployment sees it."""
    with ServiceTitanHook(conn_id, env.redis_conn_id, namespace=env.redis_namespace) as hook:
        return hook.get_conn().breaker


def logged(capfd, caplog) -> str:
    """What the run logged: the task's own log (printed by Airflow) and the provider's loggers."""
    return capfd.readouterr().out + caplog.text


def sync_dag(env, conn_id: str, **kwargs):
    dag = env.dag()
    with dag:
        env.sync(conn_id, servicetitan_resources=RESOURCES, retries=0, **kwargs)
    return dag


def test_an_open_breaker_defers_the_task_and_it_resumes_in_the_same_try(operator_env, capfd, caplog, monkeypatch):
    env = operator_env(records=60, export_page_size=20)
    conn_id = env.connect(0)
    breaker = breaker_of(env, conn_id)
    breaker.force_open(600)
    deferred: list[BreakerProbeTrigger] = []
    defer = ServiceTitanSyncOperator.defer

    def defer_then_end_the_outage(self, **kwargs):
        # The task hands its wait to the trigger; meanwhile a person resets the breaker. The
        # trigger, run in line by dag.test(), must see the reset and resume the task.
        deferred.append(kwargs["trigger"])
        breaker.reset()
        defer(self, **kwargs)

    monkeypatch.setattr(ServiceTitanSyncOperator, "defer", defer_then_end_the_outage)

    dagrun = env.run(sync_dag(env, conn_id))

    ti = dagrun.get_task_instance(f"sync_{conn_id}")
    # No try was spent waiting: the first try waited in the trigger, then synced.
    assert (ti.state, ti.try_number) == ("success", 1)
    (trigger,) = deferred
    _classpath, kwargs = trigger.serialize()
    assert (kwargs["state_key"], kwargs["probes_key"]) == (breaker.redis_keys[0], breaker.redis_keys[3])
    assert (kwargs["redis_conn_id"], kwargs["not_before"]) == (env.redis_conn_id, None)
    output = logged(capfd, caplog)
    assert WAITED in output
    assert "Resuming st_tenant_0 after waiting in the triggerer" in output
    for resource in RESOURCES:
        assert env.stored(0, resource) == env.truth(0, resource)
    assert breaker_of(env, conn_id).state is BreakerState.CLOSED


def test_probe_now_tries_an_open_breaker_at_once(operator_env, capfd, caplog):
    env = operator_env(records=60, export_page_size=20)
    conn_id = env.connect(0)
    breaker_of(env, conn_id).force_open(600)  # an operator held it open: nobody would call for 10 minutes

    dagrun = env.run(sync_dag(env, conn_id, probe_now="{{ 'True' }}"))

    assert dagrun.get_task_instance(f"sync_{conn_id}").state == "success"
    output = logged(capfd, caplog)
    assert "probe_now is set: asking the circuit breaker for a probe at once" in output
    assert "open -> half_open (probe_requested)" in output
    assert WAITED not in output
    for resource in RESOURCES:
        assert env.stored(0, resource) == env.truth(0, resource)
    assert breaker_of(env, conn_id).state is BreakerState.CLOSED


def test_a_failed_probe_reopens_the_breaker_and_a_wait_past_max_deferred_goes_to_retries(operator_env, capfd, caplog):
    env = operator_env(records=60, export_page_size=20)
    conn_id = env.connect(0, breaker={"open_seconds": 600, "max_open_seconds": 600})
    breaker_of(env, conn_id).force_open(600)
    env.sandbox.admin.set_faults(error_rate=1.0)  # the service is still down

    dagrun = env.run(sync_dag(env, conn_id, probe_now=True, max_deferred=timedelta(minutes=5)))

    assert dagrun.get_task_instance(f"sync_{conn_id}").state == "failed"
    output = logged(capfd, caplog)
    # One probe went out and failed: the breaker is open again for its whole period, longer than
    # the task may wait deferred, so the try fails for Airflow's retries to take over.
    assert "half_open -> open (probe_failed)" in output
    assert "would pass max_deferred" in output
    assert WAITED not in output
    assert breaker_of(env, conn_id).state is BreakerState.OPEN
    assert env.sandbox.admin.stats()["requests_by_endpoint"].get("export", 0) == 1


def test_without_shared_redis_the_task_does_not_defer(operator_env, capfd, caplog):
    env = operator_env(records=60, export_page_size=20)
    conn_id = env.connect(0, breaker={"failure_threshold": 2, "minimum_calls": 2, "open_seconds": 600})
    env.sandbox.admin.set_faults(error_rate=1.0)
    dag = env.dag()
    with dag:
        ServiceTitanSyncOperator(
            task_id="sync",
            servicetitan_conn_id=conn_id,
            servicetitan_resources=RESOURCES,
            warehouse_conn_id=env.warehouse.conn_id,
            redis_conn_id=None,
            table_prefix=env.warehouse.table_prefix,
            retries=0,
        )

    dagrun = env.run(dag)

    assert dagrun.get_task_instance("sync").state == "failed"
    output = logged(capfd, caplog)
    assert "CircuitBreakerOpenError" in output
    assert WAITED not in output


@pytest.mark.parametrize("value", [timedelta(0), timedelta(seconds=-1), 5])
def test_wait_settings_must_be_positive_timedeltas(operator_env, value):
    env = operator_env()
    with pytest.raises(ValueError, match="defer_after must be a positive timedelta"):
        env.sync(env.connect(0), defer_after=value)


def test_a_long_rate_limit_pause_defers_the_task_until_it_is_over(operator_env, capfd, caplog, monkeypatch):
    env = operator_env(records=60, export_page_size=20)
    conn_id = env.connect(0)
    # One 429 asking for 3 s, longer than the task may sleep (defer_after 1 s): it waits deferred.
    env.sandbox.admin.set_faults(burst_429=1, burst_429_retry_after=3)
    deferred: list[BreakerProbeTrigger] = []
    defer = ServiceTitanSyncOperator.defer

    def record(self, **kwargs):
        deferred.append(kwargs["trigger"])
        defer(self, **kwargs)

    monkeypatch.setattr(ServiceTitanSyncOperator, "defer", record)
    before = time.time()

    dagrun = env.run(sync_dag(env, conn_id, defer_after=timedelta(seconds=1)))

    ti = dagrun.get_task_instance(f"sync_{conn_id}")
    assert (ti.state, ti.try_number) == ("success", 1)
    (trigger,) = deferred
    _classpath, kwargs = trigger.serialize()
    # A pause is waited out, not watched: no breaker, no Redis needed in the triggerer.
    assert (kwargs["state_key"], kwargs["redis_conn_id"]) == (None, None)
    assert kwargs["not_before"] >= before + 3
    assert WAITED in logged(capfd, caplog)
    for resource in RESOURCES:
        assert env.stored(0, resource) == env.truth(0, resource)
