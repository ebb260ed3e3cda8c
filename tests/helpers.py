"""Small helpers shared by tests."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.dag_processing.collection import update_dag_parsing_results_in_db
from airflow.sdk import DAG
from airflow.serialization.serialized_objects import LazyDeserializedDAG
from airflow.utils.session import create_session

from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.sandbox import SandboxCredential, SandboxServer


def credentials_for(sandbox: SandboxServer, index: int = 0, **changes: Any) -> ServiceTitanCredentials:
    cred: SandboxCredential = sandbox.credentials[index]
    fields: dict[str, Any] = {
        "client_id": cred.client_id,
        "client_secret": cred.client_secret,
        "app_key": cred.app_key,
        "tenant_id": cred.tenant_id,
        "environment": "integration",
        "auth_url": sandbox.token_url,
        "api_url": sandbox.base_url,
        **changes,
    }
    return ServiceTitanCredentials(**fields)


def sandbox_extra(sandbox: SandboxServer, index: int = 0) -> dict[str, str]:
    """The extra of a ``servicetitan`` connection to sandbox credential ``index``, as a user fills it in."""
    cred: SandboxCredential = sandbox.credentials[index]
    return {
        "app_key": cred.app_key,
        "tenant_id": str(cred.tenant_id),
        "environment": "integration",
        "auth_url": sandbox.token_url,
        "api_url": sandbox.base_url,
    }


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **conn: Any) -> None:
    """Define an Airflow connection for one test, as an ``AIRFLOW_CONN_*`` environment variable."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def register(dag: DAG) -> None:
    """Serialize ``dag`` into the metadata DB, as the DAG processor would: dag.test() runs only known DAGs."""
    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script that is not part of a package (``scripts/``, ``compose/``) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


#: ``scripts/local_servers.py``: the Redis and PostgreSQL ``make test`` and ``make demo`` start.
local_servers = load_script(Path(__file__).resolve().parents[1] / "scripts" / "local_servers.py", "local_servers")


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll an observable condition (not a fixed sleep) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def delete_redis_keys(url: str, pattern: str) -> int:
    """Delete the keys matching ``pattern`` (never FLUSHDB: others share the database); how many there were."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()
