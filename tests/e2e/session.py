"""One e2e session: sandbox, warehouse, Redis namespace, Airflow services, and what the DAG needs.

:func:`e2e_session` builds it all, yields an :class:`E2ESession` and takes it all down again, in
reverse order, whatever happened in between (an ``ExitStack`` owns every piece as soon as it exists).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES
from airflow_provider_servicetitan.sandbox import SandboxConfig, SandboxServer
from airflow_provider_servicetitan.storage.store import SyncStore
from tests.chaos.audit import Audit, audit
from tests.e2e.rest import AirflowRest
from tests.e2e.services import ADMIN_USER, AirflowServices, PhaseTimer, scratch_database
from tests.helpers import delete_redis_keys, sandbox_extra
from tests.notifications.servers import WebhookReceiver

DAG_ID = "servicetitan_sync"
DAG_FILE = "servicetitan_sync.py"
SERVICETITAN_CONN_TYPE = "servicetitan"
DAGS_SOURCE = Path(__file__).resolve().parents[2] / "dags"
CONNECTIONS_VARIABLE = "servicetitan_connections"
WAREHOUSE_CONN_ID = "servicetitan_warehouse"
REDIS_CONN_ID = "redis_default"
ALERTS_CONN_ID = "servicetitan_alerts"
REDIS_URL = os.environ.get("SERVICETITAN_E2E_REDIS_URL", "redis://127.0.0.1:6379/6")
KEEP_HOME = "SERVICETITAN_E2E_KEEP_HOME"
"""Set to 1 to keep the session's AIRFLOW_HOME (service and task logs) after the run."""

SANDBOX_TENANTS = 3
_READY_TIMEOUT = 240.0
_POLL = 0.5


@dataclass
class E2ESession:
    """Everything a test of real Airflow needs.

    :param services: the running Airflow services (``base_url``, ``users``, ``logs_tail()``, ``install_dag()``).
    :param rest: the REST API as the admin user.
    :param sandbox: the ServiceTitan sandbox the tasks call over HTTP.
    :param credentials: the ``servicetitan`` connection id of each sandbox credential, by index.
    :param warehouse_url: SQLAlchemy URL of the warehouse database (``servicetitan_warehouse``).
    :param table_prefix: the warehouse table prefix the DAG uses (``SERVICETITAN_TABLE_PREFIX``).
    :param redis_namespace: the DAG's Redis key namespace (``[servicetitan] redis_namespace``).
    :param timer: the startup phases and how long each took.
    :param alerts: the webhook the DAG's alerts are posted to (``servicetitan_alerts``).
    """

    services: AirflowServices
    rest: AirflowRest
    sandbox: SandboxServer
    credentials: list[str]
    warehouse_url: str
    table_prefix: str
    redis_namespace: str
    timer: PhaseTimer
    alerts: WebhookReceiver
    _ready: dict[str, dict[str, Any]] = field(default_factory=dict)

    def login(self, username: str) -> AirflowRest:
        """A REST client as another user of the session (``viewer``); the caller closes it."""
        user = self.services.users[username]
        return AirflowRest(self.services.base_url, user.username, user.password, diagnostics=self.services.logs_tail)

    def install_dag(self, path: Path, dag_id: str, *, timeout: float = _READY_TIMEOUT) -> dict[str, Any]:
        """Copy a DAG file into the services' DAGs folder, then :meth:`ready_dag` it."""
        self.services.install_dag(path)
        return self.ready_dag(dag_id, path.name, timeout=timeout)

    def ready_dag(self, dag_id: str, filename: str, *, timeout: float = _READY_TIMEOUT) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id`` (an import error of ``filename`` fails at
        once), unpause it and return it as the REST API shows it. The first wait is a startup phase."""
        if dag_id in self._ready:
            return self._ready[dag_id]
        with self.timer.phase(f"DAG {dag_id} parsed"):
            dag = self.rest.wait_for_dag(dag_id, timeout=timeout, filename=filename)
        self.rest.unpause(dag_id)
        self._ready[dag_id] = dag
        return dag

    def connection_fields(self, index: int) -> dict[str, Any]:
        """The fields of the ``servicetitan`` connection of credential ``index`` (``login``, ``password``,
        ``extra`` as a dict): a base for :meth:`AirflowRest.test_connection` and variants of it."""
        return servicetitan_fields(self.sandbox, index)

    def tenant(self, index: int) -> int:
        return self.sandbox.credentials[index].tenant_id

    def audit(self, index: int) -> Audit:
        """The warehouse held against the sandbox truth for credential ``index`` (every exportable resource);
        before any run created the warehouse's tables, it holds nothing."""
        with closing(SyncStore(self.warehouse_url, table_prefix=self.table_prefix)) as store:
            store.create_tables()
            return audit(self.sandbox, store, [self.tenant(index)], EXPORTABLE_RESOURCES, [self.credentials[index]])

    def matches_truth(self, index: int) -> bool:
        """Whether the warehouse holds exactly the truth of credential ``index``: every record at its
        current version, none lost, duplicated, unexpected or left parked."""
        return is_exact(self.audit(index))


def is_exact(result: Audit) -> bool:
    return (
        result.expected > 0
        and result.in_warehouse == result.expected
        and result.lost == result.duplicates == result.unexpected == result.dead_letters == 0
    )


@contextmanager
def e2e_session(
    report: Callable[[str], None],
    *,
    sandbox_config: SandboxConfig | None = None,
    extra_env: Mapping[str, str] | None = None,
    redis_url: str = REDIS_URL,
) -> Iterator[E2ESession]:
    """Start everything, yield the session, stop everything (``report`` gets the phase timings).

    :param sandbox_config: the sandbox's settings (default: a few tenants, fast limits).
    :param extra_env: more environment for every Airflow service, over the session's (e.g. another executor).
    :param redis_url: the Redis of the provider's shared state (the ``redis_default`` connection).
    """
    timer = PhaseTimer(report)
    token = uuid.uuid4().hex[:10]
    namespace, table_prefix = f"st_e2e_{token}", f"st_e2e_{token}"
    with ExitStack() as stack:
        home = Path(tempfile.mkdtemp(prefix="st-e2e-home-"))
        stack.callback(_remove_home, home, report)
        stack.callback(_delete_redis_keys, namespace, redis_url)
        with timer.phase("databases and sandbox"):
            metadata_url = stack.enter_context(scratch_database("st_e2e"))
            warehouse_url = stack.enter_context(scratch_database("st_e2e_wh"))
            sandbox = stack.enter_context(SandboxServer(sandbox_config or _sandbox_config()))
            alerts = stack.enter_context(WebhookReceiver())
        services = AirflowServices(
            home,
            metadata_url,
            extra_env={
                "AIRFLOW__SERVICETITAN__REDIS_NAMESPACE": namespace,
                "SERVICETITAN_TABLE_PREFIX": table_prefix,
                "SERVICETITAN_WAREHOUSE_CONN_ID": WAREHOUSE_CONN_ID,
                "AIRFLOW__SERVICETITAN__REDIS_CONN_ID": REDIS_CONN_ID,
                # Runs come from the tests; the schedule (yearly) never fires during a session.
                "SERVICETITAN_SYNC_SCHEDULE": "0 0 1 1 *",
                "SERVICETITAN_ALERT_WEBHOOK_CONN_ID": ALERTS_CONN_ID,
                **(extra_env or {}),
            },
        )
        for dag_file in sorted(DAGS_SOURCE.glob("*.py")):
            services.install_dag(dag_file)
        with timer.phase("airflow db migrate"):
            services.migrate()
        stack.callback(services.stop)
        with timer.phase("services ready"):
            services.start()
            _wait_until_healthy(services)
        admin = services.users[ADMIN_USER]
        rest = AirflowRest(services.base_url, admin.username, admin.password, diagnostics=services.logs_tail)
        stack.callback(rest.close)
        session = E2ESession(services, rest, sandbox, [], warehouse_url, table_prefix, namespace, timer, alerts)
        with timer.phase("connections and variable"):
            session.credentials.extend(_create_connections(rest, sandbox, warehouse_url, redis_url))
            rest.create_connection(ALERTS_CONN_ID, "http", host="127.0.0.1", port=alerts.port)
        yield session


def _sandbox_config() -> SandboxConfig:
    """Several tenants, fast limits, changes visible at once: the tests wait on Airflow, not the sandbox."""
    return SandboxConfig(tenants=SANDBOX_TENANTS, records=120, seed=7, recent_changes_delay=0, rate_limit=1000)


def _create_connections(rest: AirflowRest, sandbox: SandboxServer, warehouse_url: str, redis_url: str) -> list[str]:
    """The connections and the Variable a user of the DAG defines, through the REST API."""
    credentials = []
    for index in range(len(sandbox.credentials)):
        conn_id = f"servicetitan_e2e_{index}"
        rest.create_connection(conn_id, SERVICETITAN_CONN_TYPE, **servicetitan_fields(sandbox, index))
        credentials.append(conn_id)
    database = warehouse_url.rsplit("/", 1)[1]
    rest.create_connection(
        WAREHOUSE_CONN_ID, "postgres", host="127.0.0.1", port=5432, login="postgres", schema=database
    )
    redis_parts = httpx.URL(redis_url)
    rest.create_connection(
        REDIS_CONN_ID,
        "redis",
        host=redis_parts.host,
        port=redis_parts.port or 6379,
        extra={"db": int(redis_parts.path.strip("/") or 0)},
    )
    rest.set_variable(CONNECTIONS_VARIABLE, credentials[:2])
    return credentials


def servicetitan_fields(sandbox: SandboxServer, index: int) -> dict[str, Any]:
    """The fields of a ``servicetitan`` connection to sandbox credential ``index``, as a user fills them."""
    cred = sandbox.credentials[index]
    return {
        "login": cred.client_id,
        "password": cred.client_secret,
        "extra": sandbox_extra(sandbox, index),
    }


def _wait_until_healthy(services: AirflowServices) -> None:
    """Poll ``/api/v2/monitor/health`` until the database and the scheduler, triggerer and dag-processor
    report healthy heartbeats; fail at once if a service exits."""
    deadline = time.monotonic() + _READY_TIMEOUT
    last = "no answer"
    with httpx.Client(base_url=services.base_url, timeout=5.0) as http:
        while True:
            services.check_running()
            try:
                health = http.get("/api/v2/monitor/health").json()
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{exc.__class__.__name__}: {exc}"
            else:
                components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
                statuses = {name: (health.get(name) or {}).get("status") for name in components}
                if all(status == "healthy" for status in statuses.values()):
                    return
                last = str(statuses)
            if time.monotonic() > deadline:
                raise AssertionError(f"Airflow services not healthy in time ({last}):\n{services.logs_tail()}")
            time.sleep(_POLL)


def _delete_redis_keys(namespace: str, redis_url: str) -> None:
    """Delete the session's keys only."""
    delete_redis_keys(redis_url, f"*{namespace}*")


def _remove_home(home: Path, report: Callable[[str], None]) -> None:
    if os.environ.get(KEEP_HOME) == "1":
        report(f"e2e: AIRFLOW_HOME kept at {home}")
        return
    shutil.rmtree(home, ignore_errors=True)
