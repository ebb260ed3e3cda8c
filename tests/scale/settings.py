"""The scale test's settings, from the environment (``make scale`` passes them), with their derived values."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

TENANTS_VAR = "SERVICETITAN_SCALE_TENANTS"
MAX_MAP_LENGTH_VAR = "SERVICETITAN_SCALE_MAX_MAP_LENGTH"
WORKERS_VAR = "SERVICETITAN_SCALE_WORKERS"
CONCURRENCY_VAR = "SERVICETITAN_SCALE_CONCURRENCY"
RECORDS_VAR = "SERVICETITAN_SCALE_RECORDS"
REPORT_VAR = "SERVICETITAN_SCALE_REPORT"
BROKER_VAR = "SERVICETITAN_SCALE_BROKER_URL"

_MIN_TENANTS = 4  # a healthy credential besides the outage, the rejected one and the one cleared at the end


def _int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    value = int(raw) if raw else default
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class ScaleSettings:
    """How big the run is and how it is spread.

    :param tenants: sandbox tenants, one ``servicetitan`` connection each, all synced by one run.
    :param max_map_length: ``[core] max_map_length`` of every Airflow service.
    :param workers: ``airflow celery worker`` processes.
    :param concurrency: task slots of each worker (``--concurrency``).
    :param records: records per tenant per resource in the sandbox.
    :param report: where the figures are written (JSON).
    :param broker_url: the Celery broker (its own Redis database; the test deletes the keys it made).
    """

    tenants: int
    max_map_length: int
    workers: int
    concurrency: int
    records: int
    report: Path
    broker_url: str

    @classmethod
    def from_env(cls) -> ScaleSettings:
        return cls(
            tenants=_int(TENANTS_VAR, 200, _MIN_TENANTS),
            max_map_length=_int(MAX_MAP_LENGTH_VAR, 100, 1),
            workers=_int(WORKERS_VAR, 2, 2),
            concurrency=_int(CONCURRENCY_VAR, 4, 1),
            records=_int(RECORDS_VAR, 20, 1),
            report=Path(os.environ.get(REPORT_VAR) or ".scale/report.json"),
            broker_url=os.environ.get(BROKER_VAR) or "redis://127.0.0.1:6379/4",
        )

    @property
    def shards(self) -> int:
        """Mapped task groups the DAG needs for every credential (``SERVICETITAN_CREDENTIAL_SHARDS``)."""
        return math.ceil(self.tenants / self.max_map_length)

    @property
    def slots(self) -> int:
        return self.workers * self.concurrency

    @property
    def outage(self) -> int:
        """Index of the credential whose tenant is in outage (shard 1)."""
        return 1

    @property
    def rejected(self) -> int:
        """Index of the credential whose connection holds a wrong client secret (a middle shard)."""
        return self.tenants // 2

    @property
    def cleared(self) -> int:
        """Index of the healthy credential cleared on its own at the end: the last one, in the last shard."""
        return self.tenants - 1

    def shard_of(self, index: int) -> tuple[int, int]:
        """(shard from 1, map index inside it) of credential ``index``: list order, ``max_map_length`` each."""
        return index // self.max_map_length + 1, index % self.max_map_length

    def timeout(self) -> float:
        """The test's own deadline: startup, then a generous few seconds of machine time per credential."""
        return 900.0 + 20.0 * self.tenants
