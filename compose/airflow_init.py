"""One-shot initialisation of the Docker Compose deployment (the ``airflow-init`` service).

Runs inside the project's image, after PostgreSQL, Redis and the sandbox are healthy, and before any
other Airflow service starts:

1. ``airflow db migrate`` (idempotent);
2. the admin's password in the simple auth manager's passwords file (nothing is generated or printed);
3. the connections, imported in one ``airflow connections import --overwrite``: the warehouse
   (``postgres``), the shared Redis (``redis``, its database in the ``db`` extra), one ``servicetitan``
   connection per sandbox credential (read from the sandbox's ``/_sandbox/config``, as
   ``servicetitan-sandbox airflow-connections`` does), and the alert webhook (``http``) when one is
   configured;
4. the Variable ``servicetitan_connections`` (the sandbox's connection ids), only if it does not exist
   yet: a list edited by a person survives a restart.

Every value comes from the environment the compose file gives the service; secrets go to Airflow
through a private temporary file, never through a command line or a log line. Without a sandbox
(``SERVICETITAN_SANDBOX_URL`` empty: the real ServiceTitan API), steps 3 and 4 leave the ServiceTitan
connections and the Variable to you.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_provider_servicetitan.sandbox.cli import CONNECTIONS_VARIABLE, sandbox_connections


def platform_connections(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The warehouse, the shared Redis and (if configured) the alert webhook."""
    connections: dict[str, dict[str, Any]] = {
        env["SERVICETITAN_WAREHOUSE_CONN_ID"]: {
            "conn_type": "postgres",
            "description": "ServiceTitan warehouse",
            "host": env["WAREHOUSE_HOST"],
            "port": int(env["WAREHOUSE_PORT"]),
            "schema": env["WAREHOUSE_DB"],
            "login": env["WAREHOUSE_USER"],
            "password": env["WAREHOUSE_PASSWORD"],
        },
        env["AIRFLOW__SERVICETITAN__REDIS_CONN_ID"]: {
            "conn_type": "redis",
            "description": "Shared state of the ServiceTitan provider: tokens, circuit breakers, alert deduplication",
            "host": env["REDIS_HOST"],
            "port": int(env["REDIS_PORT"]),
            "password": env["REDIS_PASSWORD"],
            "extra": {"db": int(env["REDIS_DB"])},
        },
    }
    webhook_conn_id = env.get("SERVICETITAN_ALERT_WEBHOOK_CONN_ID", "").strip()
    webhook_url = env.get("SERVICETITAN_ALERT_WEBHOOK_URL", "").strip()
    if webhook_conn_id and webhook_url:
        connections[webhook_conn_id] = {
            "conn_type": "http",
            "description": "Slack-compatible incoming webhook of the ServiceTitan alerts",
            "host": webhook_url,
        }
    return connections


def admin_passwords(env: Mapping[str, str]) -> dict[str, str]:
    """The simple auth manager's passwords file content: the one admin of ``[core] simple_auth_manager_users``."""
    return {env["AIRFLOW_ADMIN_USERNAME"]: env["AIRFLOW_ADMIN_PASSWORD"]}


def _write_private(path: Path, content: object) -> None:
    """Write JSON readable by this user only (it holds secrets)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(content, file)


def _airflow(env: Mapping[str, str], *args: str) -> None:
    print(f"airflow-init: airflow {' '.join(args[:2])}", flush=True)
    subprocess.run(["airflow", *args], env=dict(env), check=True)  # noqa: S603, S607


def initialise(env: Mapping[str, str]) -> list[str]:
    """Run every step; return the ServiceTitan connection ids it created (empty without a sandbox)."""
    _airflow(env, "db", "migrate")
    _write_private(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]), admin_passwords(env))
    sandbox_url = env.get("SERVICETITAN_SANDBOX_URL", "").strip()
    credentials = sandbox_connections(sandbox_url) if sandbox_url else {}
    with tempfile.TemporaryDirectory(prefix="airflow-init-") as scratch:
        connections_file = Path(scratch) / "connections.json"
        _write_private(connections_file, {**platform_connections(env), **credentials})
        _airflow(env, "connections", "import", "--overwrite", str(connections_file))
        if credentials:
            variables_file = Path(scratch) / "variables.json"
            _write_private(variables_file, {CONNECTIONS_VARIABLE: sorted(credentials)})
            _airflow(env, "variables", "import", "--action-on-existing-key", "skip", str(variables_file))
    return sorted(credentials)


def main() -> int:
    created = initialise(os.environ)
    print(f"airflow-init: done; ServiceTitan connections from the sandbox: {created or 'none'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
