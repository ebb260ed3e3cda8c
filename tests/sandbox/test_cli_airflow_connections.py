"""``servicetitan-sandbox airflow-connections``: a running sandbox's credentials become Airflow connections.

The subcommand runs as users run it (the console script, over HTTP to a running sandbox); the file it
writes and the commands it prints are run by the real ``airflow`` CLI into the test session's Airflow
home, and a ``ServiceTitanHook`` built on an imported connection (read from the metadata DB) reaches the
sandbox.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from airflow_provider_servicetitan.sandbox import SandboxServer

BIN = Path(sys.executable).parent
SANDBOX_CLI = str(BIN / "servicetitan-sandbox")


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=180, check=False)


def airflow_commands(printed: str) -> list[list[str]]:
    """The ``airflow ...`` commands the subcommand printed, ready to run with the venv's ``airflow``."""
    commands = [shlex.split(line) for line in printed.splitlines() if line.strip().startswith("airflow ")]
    return [[str(BIN / "airflow"), *words[1:]] for words in commands]


def hook_test_connection(conn_id: str) -> tuple[bool, str]:
    """``ServiceTitanHook(conn_id).test_connection()`` where the api-server's Test button runs it: a process
    whose hooks read connections from the metadata DB (Airflow's server context; a plain process sees only
    environment variables and external secrets backends)."""
    code = (
        "import json, sys\n"
        "from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook\n"
        "print(json.dumps(ServiceTitanHook(sys.argv[1], redis_conn_id=None).test_connection()))\n"
    )
    env = {**os.environ, "_AIRFLOW_PROCESS_CONTEXT": "server"}
    done = subprocess.run(
        [sys.executable, "-c", code, conn_id], capture_output=True, text=True, env=env, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ok, message = json.loads(done.stdout.splitlines()[-1])
    return ok, message


@pytest.fixture
def prefix() -> str:
    return f"st_cli_{uuid.uuid4().hex[:8]}_"


def test_connections_file_and_printed_commands_register_working_connections(
    sandbox: SandboxServer, airflow_db: None, tmp_path: Path, prefix: str
):
    output = tmp_path / "connections.json"

    done = run(
        [SANDBOX_CLI, "airflow-connections", "--url", sandbox.base_url, "--prefix", prefix, "--output", str(output)]
    )

    assert done.returncode == 0, done.stderr
    written = json.loads(output.read_text())
    conn_ids = [f"{prefix}{c.tenant_id}" for c in sandbox.credentials]
    assert list(written) == conn_ids
    for conn_id, credential in zip(conn_ids, sandbox.credentials, strict=True):
        fields = written[conn_id]
        assert (fields["conn_type"], fields["login"], fields["password"]) == (
            "servicetitan",
            credential.client_id,
            credential.client_secret,
        )
        assert json.loads(fields["extra"]) == {
            "app_key": credential.app_key,
            "tenant_id": str(credential.tenant_id),
            "environment": "integration",
            "auth_url": sandbox.token_url,
            "api_url": sandbox.base_url,
        }

    commands = airflow_commands(done.stdout)
    assert [words[1:3] for words in commands] == [["connections", "import"], ["variables", "set"]]
    for command in commands:
        ran = run(command)
        assert ran.returncode == 0, ran.stderr[-2000:]

    variable = run([str(BIN / "airflow"), "variables", "get", "servicetitan_connections"])
    assert json.loads(variable.stdout) == conn_ids
    for conn_id, credential in zip(conn_ids, sandbox.credentials, strict=True):
        ok, message = hook_test_connection(conn_id)
        assert ok, message
        assert f"tenant {credential.tenant_id}" in message


def test_without_output_the_json_goes_to_stdout_and_the_commands_to_stderr(sandbox: SandboxServer):
    done = run([SANDBOX_CLI, "airflow-connections", "--url", sandbox.base_url + "/"])

    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert list(written) == [f"servicetitan_sandbox_{c.tenant_id}" for c in sandbox.credentials]
    assert json.loads(written["servicetitan_sandbox_1001"]["extra"])["api_url"] == sandbox.base_url
    assert "airflow connections import --overwrite connections.json" in done.stderr
    assert "airflow variables set servicetitan_connections" in done.stderr


def test_a_url_where_no_sandbox_answers_fails_with_a_message(tmp_path: Path):
    output = tmp_path / "connections.json"

    done = run([SANDBOX_CLI, "airflow-connections", "--url", "http://127.0.0.1:9", "--output", str(output)])

    assert done.returncode == 1
    assert "cannot read the sandbox's credentials at http://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists()


def test_the_server_command_still_parses_its_options():
    done = run([SANDBOX_CLI, "--help"])

    assert done.returncode == 0
    assert "--tenants" in done.stdout
    assert "airflow-connections" in done.stdout
