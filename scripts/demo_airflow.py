"""The demo's Airflow: a fresh home (SQLite), its settings, CLI commands logged to a file, and services.

Every command runs the venv's ``airflow`` (next to the running Python), which imports the provider
installed in editable mode. Output goes to ``home/airflow.log``, never to the demo's summary.

:func:`airflow_env`, :func:`write_passwords`, :func:`start_services` and :func:`stop_services` are
the parts the e2e harness (``tests/e2e/services.py``) shares: same environment, same four services.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet
from process_groups import stop_process_tree

AIRFLOW = Path(sys.executable).with_name("airflow")
DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
ADMIN_USER = "admin"
_COMMAND_TIMEOUT = 600.0
_STOP_GRACE = 20.0


def airflow_env(
    *,
    home: Path,
    dags_folder: Path,
    metadata_url: str,
    port: int,
    fernet_key: str,
    api_secret: str,
    jwt_secret: str,
    users: Mapping[str, str],
    passwords_file: Path,
    log_server_ports: tuple[int, int],
) -> dict[str, str]:
    """The environment every Airflow process of one home shares: LocalExecutor, simple auth, this port.

    The calling process's own ``AIRFLOW*`` variables are left out: the processes have their own home
    and database.

    :param users: role by username, for the simple auth manager (passwords in ``passwords_file``).
    """
    base = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    base_url = f"http://127.0.0.1:{port}"
    return {
        **base,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": fernet_key,
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{name}:{role}" for name, role in users.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        # Tasks reach the api-server's execution API on the port used (default: localhost:8080).
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__API__PORT": str(port),
        # One secret for all services: the scheduler signs the task tokens the api-server checks.
        "AIRFLOW__API__SECRET_KEY": api_secret,
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
        # The log servers of workers and triggerer on free ports (defaults 8793/8794 may be taken).
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_server_ports[0]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(log_server_ports[1]),
        # One DAG parser process.
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
    }


def write_passwords(path: Path, passwords: Mapping[str, str]) -> None:
    """The simple auth manager keeps the password of a user it finds in this file (and generates the
    others): writing it first gives known logins."""
    path.write_text(json.dumps(dict(passwords)))


def start_services(port: int, env: Mapping[str, str], cwd: Path, log_dir: Path) -> dict[str, subprocess.Popen[bytes]]:
    """Start api-server (on ``port``), scheduler, dag-processor and triggerer, each in its own process
    group (not hit by a terminal's Ctrl+C: :func:`stop_services` stops them in order), each logging to
    ``log_dir/<name>.log``; readiness is the caller's to wait for."""
    commands = {
        "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        "scheduler": ["scheduler"],
        "dag-processor": ["dag-processor"],
        "triggerer": ["triggerer"],
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for name, args in commands.items():
        with (log_dir / f"{name}.log").open("ab") as sink:
            processes[name] = subprocess.Popen(  # noqa: S603 (the venv's airflow, our arguments)
                [str(AIRFLOW), *args],
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    return processes


def stop_services(processes: dict[str, subprocess.Popen[bytes]], grace: float = _STOP_GRACE) -> None:
    """SIGTERM each service's group, api-server last (the others talk to it until they are gone);
    SIGKILL whatever of it (tasks included) remains after ``grace`` seconds. Stopped ones leave ``processes``."""
    for name in reversed(SERVICES):
        process = processes.pop(name, None)
        if process is not None:
            stop_process_tree(process, grace=grace)


class AirflowCommandError(RuntimeError):
    """An ``airflow`` command failed; its output is in the log file the message names."""


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it can be bound on 127.0.0.1, else a free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            bound: int = sock.getsockname()[1]
            return bound
    raise OSError("no free port on 127.0.0.1")


@dataclass
class AirflowHome:
    """A fresh ``AIRFLOW_HOME`` under ``root`` with everything the demo's commands and services share.

    :param root: the directory; emptied first.
    :param settings: more environment (the provider's ``[servicetitan]`` settings, the DAG's ``SERVICETITAN_*``).
    :param port: the api-server's port (services only; the CLI commands do not need it).
    """

    root: Path
    settings: Mapping[str, str]
    port: int = 8080
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    fernet_key: str = field(default_factory=lambda: Fernet.generate_key().decode())
    api_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    log_server_ports: tuple[int, int] = field(default_factory=lambda: (free_port(), free_port()))

    def __post_init__(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        write_passwords(self.passwords_file, {ADMIN_USER: self.password})

    @property
    def log(self) -> Path:
        return self.root / "airflow.log"

    @property
    def passwords_file(self) -> Path:
        return self.root / "simple_auth_manager_passwords.json"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment of every Airflow process: this home, SQLite, LocalExecutor, simple auth."""
        shared = airflow_env(
            home=self.root,
            dags_folder=DAGS_FOLDER,
            metadata_url=f"sqlite:///{self.root / 'airflow.db'}",
            port=self.port,
            fernet_key=self.fernet_key,
            api_secret=self.api_secret,
            jwt_secret=self.api_secret,
            users={ADMIN_USER: "admin"},
            passwords_file=self.passwords_file,
            log_server_ports=self.log_server_ports,
        )
        demo = {
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # A 2-core laptop is enough: few task slots.
            "AIRFLOW__CORE__PARALLELISM": "4",
        }
        return {**shared, **demo, **self.settings}

    def run(self, *args: str, extra_env: Mapping[str, str] | None = None) -> str:
        """Run ``airflow ARGS`` (with ``extra_env``) to completion, its output appended to :attr:`log`;
        returns its stdout.

        :raises AirflowCommandError: it exited with a non-zero status.
        """
        with self.log.open("a") as sink:
            sink.write(f"\n$ airflow {' '.join(args)}\n")
            sink.flush()
            done = subprocess.run(  # noqa: S603 (the venv's airflow, our arguments)
                [str(AIRFLOW), *args],
                env={**self.env, **(extra_env or {})},
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=sink,
                text=True,
                timeout=_COMMAND_TIMEOUT,
                check=False,
            )
            sink.write(done.stdout)
        if done.returncode != 0:
            raise AirflowCommandError(f"`airflow {' '.join(args)}` exited with {done.returncode}; see {self.log}")
        return done.stdout


class Services:
    """api-server, scheduler, dag-processor and triggerer of ``home``, each in its own process group."""

    def __init__(self, home: AirflowHome) -> None:
        self.home = home
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        self.processes = start_services(self.home.port, self.home.env, self.home.root, self.home.root)

    def exited(self) -> list[str]:
        """Services whose main process has exited."""
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop(self) -> None:
        """Stop every service, api-server last; see :func:`stop_services`."""
        stop_services(self.processes)
