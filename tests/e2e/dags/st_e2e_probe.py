"""A DAG that exercises the harness itself, independent of the provider: mapped tasks, a failure a
person fixes and clears, a deferred task.

``flaky[i]`` fails while ``i`` is in the Variable ``st_e2e_probe_fail`` (a JSON list); ``wait`` defers
to the triggerer for a few seconds.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.sensors.time_delta import WaitSensor
from airflow.sdk import DAG, Variable, task
from airflow.sdk.exceptions import AirflowFailException

FAIL_VARIABLE = "st_e2e_probe_fail"
FAILURE_MARKER = "st-e2e-probe: failing as asked"

with DAG(dag_id="st_e2e_probe", schedule=None, catchup=False, default_args={"retries": 0}) as dag:

    @task
    def items() -> list[int]:
        return [0, 1, 2]

    @task
    def flaky(n: int) -> int:
        if n in Variable.get(FAIL_VARIABLE, default=[], deserialize_json=True):
            raise AirflowFailException(f"{FAILURE_MARKER} (item {n})")
        return n

    @task(trigger_rule="all_done")
    def done() -> None:
        """Runs whatever ``flaky`` did: a Clear with downstream re-runs it."""

    flaky.expand(n=items()) >> done()
    WaitSensor(task_id="wait", time_to_wait=timedelta(seconds=8), deferrable=True)
