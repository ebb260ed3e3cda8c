"""CeleryExecutor for the e2e harness: the services' settings, ``airflow celery worker`` processes, the broker.

The broker is a Redis database of its own; every key the session's Celery makes there carries a prefix of
the session (kombu's ``global_keyprefix``), so that :func:`delete_broker_keys` removes exactly those.
Workers are asked over the broker itself (Celery's remote control, as ``celery inspect`` does) whether
they are up and how many tasks each ran.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from tests.e2e.processes import ServiceProcess
from tests.e2e.services import AIRFLOW, AirflowServices, free_port
from tests.helpers import delete_redis_keys

_READY_TIMEOUT = 180.0
_INSPECT_TIMEOUT = 2.0
# The Celery task every Airflow 3 workload runs as (airflow.providers.celery.executors.celery_executor_utils).
WORKLOAD_TASK = "execute_workload"


def celery_env(broker_url: str, key_prefix: str) -> dict[str, str]:
    """The Airflow settings every service needs for CeleryExecutor with this broker.

    No ``[celery] result_backend``: the provider then uses the metadata database (``db+`` its URL), the
    session's PostgreSQL.
    """
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": key_prefix,
    }


def celery_app(broker_url: str, key_prefix: str) -> Celery:
    """A Celery client of the same broker and key prefix as the services, for remote control only."""
    return Celery(broker=broker_url, broker_transport_options={"global_keyprefix": key_prefix})


def delete_broker_keys(broker_url: str, key_prefix: str) -> int:
    """Delete the broker keys of this key prefix (never FLUSHDB); returns how many there were."""
    return delete_redis_keys(broker_url, f"{key_prefix}*")


@dataclass
class CeleryWorkers:
    """``count`` ``airflow celery worker`` processes of the session's services, ``concurrency`` slots each.

    Each has its own Celery hostname and its own log server port (two on one machine cannot share one);
    task logs are files in the shared ``AIRFLOW_HOME``, which the api-server reads directly.
    """

    services: AirflowServices
    app: Celery
    count: int
    concurrency: int
    processes: list[ServiceProcess] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [f"scale{number}@127.0.0.1" for number in range(1, self.count + 1)]

    def start(self) -> None:
        for name in self.names:
            log = self.services.service_logs / f"worker-{name.split('@')[0]}.log"
            env: Mapping[str, str] = {
                **self.services.env,
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            }
            args = ["celery", "worker", "--concurrency", str(self.concurrency), "--celery-hostname", name]
            with log.open("ab") as sink:
                process = subprocess.Popen(
                    [str(AIRFLOW), *args, "--without-gossip", "--without-mingle"],
                    env=dict(env),
                    cwd=self.services.home,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.processes.append(ServiceProcess(name, process, log))

    def wait_until_ready(self) -> None:
        """Poll Celery's ``ping`` until every worker answers; fail at once if one exits."""
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            self.check_running()
            answered = self._inspect().ping() or {}
            if set(self.names) <= set(answered):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Celery workers not ready in time (answered: {sorted(answered)}):\n{self.tail()}")

    def tasks_run(self) -> dict[str, int]:
        """How many Airflow workloads each worker has run since it started (Celery's ``stats``)."""
        stats: dict[str, Any] = self._inspect().stats() or {}
        return {name: int((stats.get(name) or {}).get("total", {}).get(WORKLOAD_TASK, 0)) for name in self.names}

    def pids(self) -> dict[str, int]:
        return {process.name: process.process.pid for process in self.processes}

    def check_running(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited with {process.process.returncode}:\n{process.tail(60)}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {process.name} ---\n{process.tail(lines)}" for process in self.processes)

    def stop(self) -> None:
        """Stop every worker and its task processes (warm shutdown first, see ``ServiceProcess.stop``)."""
        while self.processes:
            self.processes.pop().stop()

    def _inspect(self) -> Any:
        return self.app.control.inspect(destination=self.names, timeout=_INSPECT_TIMEOUT)
