"""Real Airflow 3.3 services for the e2e tests: a fresh home and metadata DB, four services, the logs.

The environment and the services are ``scripts/demo_airflow.py``'s (``make demo`` runs the same);
what differs for the tests (PostgreSQL, a viewer, fast scheduler and dag-processor, the session's
settings) is said next to it in :func:`airflow_env`. Everything runs the venv's ``airflow``, which
imports the provider installed in editable mode.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import create_engine, make_url, text

from tests.e2e.processes import ServiceProcess, demo_airflow, tail

AIRFLOW: Path = demo_airflow.AIRFLOW
SERVICES: tuple[str, ...] = demo_airflow.SERVICES
ADMIN_USER: str = demo_airflow.ADMIN_USER
VIEWER_USER = "viewer"
POSTGRES_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"
free_port = demo_airflow.free_port
_MIGRATE_TIMEOUT = 300


@dataclass(frozen=True)
class User:
    """A simple-auth-manager user of the session (the password is generated per session)."""

    username: str
    password: str
    role: str


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database ``<prefix>_<random>``; yields its SQLAlchemy URL, drops it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield f"{POSTGRES_SERVER}/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@dataclass(frozen=True)
class SessionSecrets:
    """Keys every service of the session shares, made for the session."""

    fernet_key: str = field(default_factory=lambda: Fernet.generate_key().decode())
    api_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))


@dataclass
class AirflowServices:
    """Airflow's api-server, scheduler, dag-processor and triggerer on one fresh ``home``.

    :param home: the ``AIRFLOW_HOME`` (created empty by the caller); logs are in ``home/service-logs``
        and task logs in ``home/logs``.
    :param metadata_url: SQLAlchemy URL of an empty metadata database.
    :param extra_env: more environment for every service (the DAG file's ``SERVICETITAN_*`` settings).
    """

    home: Path
    metadata_url: str
    extra_env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    keys: SessionSecrets = field(default_factory=SessionSecrets)
    log_server_ports: tuple[int, int] = field(default_factory=lambda: (free_port(), free_port()))
    users: dict[str, User] = field(init=False)
    processes: dict[str, ServiceProcess] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.users = {
            ADMIN_USER: User(ADMIN_USER, secrets.token_urlsafe(12), "admin"),
            VIEWER_USER: User(VIEWER_USER, secrets.token_urlsafe(12), "viewer"),
        }
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        self.service_logs.mkdir(parents=True, exist_ok=True)
        demo_airflow.write_passwords(self.passwords_file, {u.username: u.password for u in self.users.values()})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dags_folder(self) -> Path:
        return self.home / "dags"

    @property
    def service_logs(self) -> Path:
        return self.home / "service-logs"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    @property
    def env(self) -> dict[str, str]:
        return airflow_env(self, self.extra_env)

    def install_dag(self, path: Path) -> Path:
        """Copy a DAG file into the DAGs folder (the dag-processor lists the folder every 2 s)."""
        target = self.dags_folder / path.name
        shutil.copyfile(path, target)
        return target

    def migrate(self) -> None:
        done = subprocess.run(
            [str(AIRFLOW), "db", "migrate"],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=_MIGRATE_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"airflow db migrate failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )

    def start(self) -> None:
        """Start every service (each in its own process group); readiness is the caller's to wait for."""
        started = demo_airflow.start_services(self.port, self.env, self.home, self.service_logs)
        for name, process in started.items():
            self.processes[name] = ServiceProcess(name, process, self.service_logs / f"{name}.log")

    def stop(self) -> None:
        """Stop every service, api-server last (the others talk to it until they are gone)."""
        for name in reversed(SERVICES):
            process = self.processes.pop(name, None)
            if process is not None:
                process.stop()

    def check_running(self) -> None:
        """Raise, with its log, if a service has exited."""
        for process in self.processes.values():
            if not process.alive():
                raise RuntimeError(
                    f"airflow {process.name} exited with {process.process.returncode}:\n{process.tail(60)}"
                )

    def logs_tail(self, lines: int = 30) -> str:
        """The end of every service's log, for a failure message."""
        parts = [f"--- {path.name} ---\n{tail(path, lines)}" for path in sorted(self.service_logs.glob("*.log"))]
        return "\n".join(parts)


def airflow_env(services: AirflowServices, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of every Airflow command of the session: ``scripts/demo_airflow.py``'s, with the
    session's database, users and keys, and settings that make the services react fast.

    The test process's own ``AIRFLOW*`` variables (tests/conftest.py gives it a SQLite home) are left
    out: the services have their own home and database.
    """
    shared: dict[str, str] = demo_airflow.airflow_env(
        home=services.home,
        dags_folder=services.dags_folder,
        metadata_url=services.metadata_url,
        port=services.port,
        fernet_key=services.keys.fernet_key,
        api_secret=services.keys.api_secret,
        jwt_secret=services.keys.jwt_secret,
        users={u.username: u.role for u in services.users.values()},
        passwords_file=services.passwords_file,
        log_server_ports=services.log_server_ports,
    )
    settings = {
        # Few task slots: the machine has 2 cores shared with other test runs.
        "AIRFLOW__CORE__PARALLELISM": "8",
        # A DAG file copied in by a test is seen within 2 s (default 300 s).
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
        "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "300",
        # The scheduler looks for work every second when idle (its default) and heartbeats every 2 s.
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
        # A task stuck in queued (a lost worker) is re-queued after 2 min, not 10, checked every 10 s.
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
        # A killed task (no heartbeat) is failed after 60 s, checked every 5 s (defaults 300 s / 10 s).
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "5",
    }
    return {**shared, **settings, **extra}


@dataclass
class PhaseTimer:
    """Seconds each startup phase took, reported through ``report`` as soon as it ends."""

    report: Callable[[str], None]
    phases: dict[str, float] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        yield
        self.phases[name] = time.monotonic() - began
        self.report(f"e2e: {name} took {self.phases[name]:.1f}s (since start {time.monotonic() - self._started:.1f}s)")


def render_url(url: str) -> str:
    """A URL fit for a message (no password)."""
    return make_url(url).render_as_string(hide_password=True)
