"""The demo's Airflow: a fresh home (SQLite), its settings, CLI commands logged to a file, and services.

Every command runs the venv's ``airflow`` (next to the running Python), which imports the provider
installed in editable mode. Output goes to ``home/airflow.log``, never to the demo's summary.
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
        # The simple auth manager keeps the password of a user it finds in this file: a known login.
        self.passwords_file.write_text(json.dumps({ADMIN_USER: self.password}))

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
        base = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
        airflow = {
            "AIRFLOW_HOME": str(self.root),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.root / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": self.fernet_key,
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            # Tasks reach the api-server's execution API on the port used (default: localhost:8080).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__SECRET_KEY": self.api_secret,
            "AIRFLOW__API_AUTH__JWT_SECRET": self.api_secret,
            # The log servers of workers and triggerer on free ports (defaults 8793/8794 may be taken).
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_server_ports[0]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.log_server_ports[1]),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # A 2-core laptop is enough: few task slots.
            "AIRFLOW__CORE__PARALLELISM": "4",
        }
        return {**base, **airflow, **self.settings}

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
        commands = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.home.port), "--workers", "1"],
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer"],
        }
        env = self.home.env
        for name, args in commands.items():
            with (self.home.root / f"{name}.log").open("ab") as sink:
                self.processes[name] = subprocess.Popen(  # noqa: S603 (the venv's airflow)
                    [str(AIRFLOW), *args],
                    env=env,
                    cwd=self.home.root,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # not hit by the terminal's Ctrl+C: we stop them in order
                )

    def exited(self) -> list[str]:
        """Services whose main process has exited."""
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop(self) -> None:
        """SIGTERM each service's group, api-server last; SIGKILL whatever of it (tasks included) remains."""
        for name in reversed(SERVICES):
            process = self.processes.pop(name, None)
            if process is not None:
                stop_process_tree(process, grace=_STOP_GRACE)
