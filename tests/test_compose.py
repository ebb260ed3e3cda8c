"""docker-compose.yaml, Dockerfile and .env.example checked against the code and the README.

Docker cannot run here, so the compose file is parsed (PyYAML, merge keys resolved), validated
against the Compose Specification's JSON schema, and checked for what the deployment relies on
(``${VAR}`` interpolation, ``depends_on`` order, health checks) and against the code: the connection
ids, env var names and config options it sets are the ones the provider and the DAG read. What can
run without Docker runs for real: the sandbox command through the CLI's parser, the health-check
URLs, the init script against a real sandbox (each connection passes the hook's Test) and a fresh
metadata database with the real ``airflow`` CLI, the PostgreSQL init script on the local server,
the Celery worker's start guard with bash. The ``celery`` and ``flower`` profiles are checked the way
Compose selects services: which ones each set of profiles starts, and that each of them can start.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jsonschema
import pytest
import redis
import sqlalchemy as sa
import yaml
from cryptography.fernet import Fernet
from packaging.requirements import Requirement
from packaging.version import Version

from airflow_provider_servicetitan.get_provider_info import CONFIG_SECTION, DEFAULT_REDIS_CONN_ID, get_provider_info
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.sandbox import SandboxConfig, SandboxServer
from tests.conftest import POSTGRES_URL
from tests.e2e.services import scratch_database
from tests.helpers import load_script, local_servers

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DAGS = ROOT / "dags"
SYNC_DAG = DAGS / "servicetitan_sync.py"
INIT_SCRIPT = ROOT / "compose" / "airflow_init.py"
POSTGRES_INIT = ROOT / "compose" / "postgres-init.sh"
# The Compose Specification's JSON schema, as Docker Compose validates with it: schema/compose-spec.json
# of github.com/compose-spec/compose-spec at 170098ba07d9f53c383a41bfd4c5166b0a4529a6 (Apache-2.0).
COMPOSE_SCHEMA = ROOT / "compose" / "compose-spec.json"

AIRFLOW_COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
AIRFLOW_SERVICES = {"airflow-init", *AIRFLOW_COMMANDS}
# What `docker compose up` starts: no profile.
SERVICES = {"postgres", "redis", "sandbox", *AIRFLOW_SERVICES}
# The services of each profile (CeleryExecutor's workers; flower, Celery's UI).
PROFILED = {"airflow-worker": ["celery"], "flower": ["flower"]}
CELERY_APP = "airflow.providers.celery.executors.celery_executor"
DAGS_FOLDER = "/opt/airflow/dags"  # $AIRFLOW_HOME/dags of the official image
# Secrets: each must come from .env, required (``${VAR:?...}``), with a placeholder in .env.example.
SECRETS = {
    "POSTGRES_PASSWORD",
    "WAREHOUSE_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_ADMIN_PASSWORD",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|_AUTH$|TOKEN|WEBHOOK_URL")
# The README's section on the compose file.
README_SECTION = "## Run it with Docker Compose"
COMPOSE_DOC = ROOT / "docs" / "compose.md"
SCALING_SECTION = "## Scaling out with CeleryExecutor"
CELERY_UP = "AIRFLOW_EXECUTOR=CeleryExecutor docker compose --profile celery up -d"

# Compose interpolation: $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME-default},
# ${NAME:?error}, ${NAME?error}, $NAME.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|(?P<invalid>\{|))"
)


def _strings(node: Any) -> Iterator[str]:
    """Every string value of a parsed YAML document (keys are not interpolated by Compose)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def interpolate(text: str, env: dict[str, str]) -> str:
    """``text`` as Compose interpolates it with ``env`` (raises on a missing required variable)."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["invalid"] is not None:
            raise AssertionError(f"invalid interpolation in {text!r}")
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in {":-", "-"} and unset_or_empty:
            return arg
        if op in {":?", "?"} and unset_or_empty:
            raise AssertionError(f"{name} is required: {arg}")
        return value or ""

    return _VARIABLE.sub(substitute, text)


def variables(document: Any) -> dict[str, set[str | None]]:
    """Each variable the document reads, with the operators it is read with (``None``: plain)."""
    found: dict[str, set[str | None]] = {}
    for text in _strings(document):
        for match in _VARIABLE.finditer(text):
            assert match["invalid"] is None, f"invalid interpolation in {text!r}"
            if name := match["name"] or match["bare"]:
                found.setdefault(name, set()).add(match["op"])
    return found


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            assert name not in values, f".env.example defines {name} twice"
            values[name] = value
    return values


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def common_env(compose: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = compose["x-airflow-common"]["environment"]
    return env


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping, so that anchors merge"
    return {key: str(value) for key, value in env.items()}


def _dag_env_settings() -> set[str]:
    """The ``SERVICETITAN_*`` environment variables the DAG files read: ``os.environ.get("...")``, or
    ``os.environ.get(NAME)`` with ``NAME`` a constant imported from the provider."""
    names: set[str] = set()
    for path in DAGS.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            alias.asname or alias.name: (node.module, alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in {"os.environ.get", "os.getenv"}:
                name = node.args[0]
                if isinstance(name, ast.Constant):
                    names.add(str(name.value))
                elif isinstance(name, ast.Name) and name.id in imported:
                    module, attribute = imported[name.id]
                    names.add(getattr(importlib.import_module(module), attribute))
    return {name for name in names if name.startswith("SERVICETITAN_")}


def _dag_constant(name: str) -> str:
    """A module-level constant of the sync DAG (``NAME = "..."`` or ``os.environ.get(..., "default")``)."""
    for node in ast.parse(SYNC_DAG.read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == name:
            value = node.value
            if isinstance(value, ast.Call):
                value = value.args[1]
            assert isinstance(value, ast.Constant)
            return str(value.value)
    raise AssertionError(f"{name} not found in {SYNC_DAG.name}")


def active_services(services: dict[str, dict[str, Any]], profiles: set[str]) -> set[str]:
    """The services ``docker compose --profile ... up`` starts: those with no profile or an enabled one."""
    return {
        name for name, service in services.items() if not service.get("profiles") or profiles & set(service["profiles"])
    }


def _load_init_script() -> ModuleType:
    return load_script(INIT_SCRIPT, "compose_airflow_init")


def test_interpolation_helpers_follow_compose() -> None:
    """The checks below rely on these two: each form Compose knows, and ``$$`` as a literal dollar."""
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$HOME ${SET} $SET ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${SET:?e}", env) == "$HOME v v d  d v"
    for text, missing in (("${UNSET:?e}", "UNSET"), ("${EMPTY:?e}", "EMPTY"), ("${UNSET?e}", "UNSET")):
        with pytest.raises(AssertionError, match=f"{missing} is required"):
            interpolate(text, env)
    assert variables(["$${HOSTNAME}", {"k": "${A:-x} $B ${C:?e}"}]) == {"A": {":-"}, "B": {None}, "C": {":?"}}
    with pytest.raises(AssertionError, match="invalid interpolation"):
        variables(["${not valid}"])


def test_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES | set(PROFILED)
    assert {name: services[name].get("profiles") for name in services if services[name].get("profiles")} == PROFILED


def test_profiles_start_the_right_services(services: dict[str, dict[str, Any]]) -> None:
    """The default set is the LocalExecutor deployment; each profile adds its services, and every
    service a selection starts has its dependencies in it (Compose refuses one in a disabled profile)."""
    assert active_services(services, set()) == SERVICES
    assert active_services(services, {"celery"}) == SERVICES | {"airflow-worker"}
    assert active_services(services, {"celery", "flower"}) == SERVICES | set(PROFILED)
    for profiles in (set(), {"celery"}, {"flower"}, {"celery", "flower"}):
        active = active_services(services, profiles)
        for name in active:
            assert set(services[name].get("depends_on", {})) <= active, (profiles, name)


def test_airflow_services_share_the_built_image_and_the_common_env(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], common_env: dict[str, str]
) -> None:
    image = compose["x-servicetitan-image"]
    assert image["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    for name in [*AIRFLOW_SERVICES, *PROFILED, "sandbox"]:
        assert services[name]["build"] == image["build"], name
        assert services[name]["image"] == image["image"], name
    for name in [*AIRFLOW_SERVICES, *PROFILED]:
        env = _environment(services[name])
        assert {key: env.get(key) for key in common_env} == {k: str(v) for k, v in common_env.items()}, name
    # The sandbox gets none of Airflow's secrets.
    assert "environment" not in services["sandbox"]


def test_common_env_is_the_airflow_33_deployment(common_env: dict[str, str]) -> None:
    # LocalExecutor unless .env (or the shell) says otherwise.
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
    assert interpolate(common_env["AIRFLOW__CORE__EXECUTOR"], {}) == "LocalExecutor"
    assert interpolate(common_env["AIRFLOW__CORE__EXECUTOR"], env_example()) == "LocalExecutor"
    assert common_env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert common_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", common_env[key]), key
    users = interpolate(common_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"], env_example())
    assert users == f"{env_example()['AIRFLOW_ADMIN_USERNAME']}:admin"
    assert common_env["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".SimpleAuthManager")


def test_commands(services: dict[str, dict[str, Any]]) -> None:
    for name, command in AIRFLOW_COMMANDS.items():
        assert services[name]["command"] == command, name
        assert "entrypoint" not in services[name], f"{name} runs the image's Airflow entrypoint"
    init = services["airflow-init"]
    script = init["entrypoint"][-1]
    assert init["entrypoint"][:3] == ["/usr/bin/dumb-init", "--", "python"]
    assert f"./compose/{INIT_SCRIPT.name}:{script}:ro" in init["volumes"]
    assert INIT_SCRIPT.is_file()
    assert services["sandbox"]["entrypoint"] == ["/usr/bin/dumb-init", "--", "servicetitan-sandbox"]
    assert "--host=0.0.0.0" in services["sandbox"]["command"]
    assert "--port=8765" in services["sandbox"]["command"]


def test_sandbox_command_is_accepted_by_the_cli(services: dict[str, dict[str, Any]]) -> None:
    from airflow_provider_servicetitan.sandbox.cli import build_parser, config_from_args

    args = [interpolate(arg, env_example()) for arg in services["sandbox"]["command"]]
    config = config_from_args(build_parser().parse_args(args))
    assert (config.host, config.port, config.tenants) == ("0.0.0.0", 8765, int(env_example()["SANDBOX_TENANTS"]))  # noqa: S104


def test_ports(services: dict[str, dict[str, Any]]) -> None:
    from airflow.configuration import conf

    published = {name: service.get("ports", []) for name, service in services.items()}
    assert published["airflow-apiserver"] == ["${AIRFLOW_API_PORT:-8080}:8080"]
    assert published["sandbox"] == ["127.0.0.1:${SANDBOX_PORT:-8765}:8765"], "admin endpoints: localhost only"
    flower_port = conf.get_default_value("celery", "flower_port")
    assert published["flower"] == [f"127.0.0.1:${{FLOWER_PORT:-{flower_port}}}:{flower_port}"], "no login: localhost"
    assert {name for name, ports in published.items() if ports} == {"airflow-apiserver", "sandbox", "flower"}


def test_health_checks(services: dict[str, dict[str, Any]], common_env: dict[str, str]) -> None:
    from airflow.api_fastapi.core_api.routes.public import public_router
    from airflow.cli.cli_config import ARG_JOB_TYPE_FILTER
    from airflow.configuration import conf

    tests = {
        name: " ".join(service["healthcheck"]["test"]) for name, service in services.items() if name != "airflow-init"
    }
    assert set(tests) == set(services) - {"airflow-init"}
    assert "pg_isready" in tests["postgres"]
    assert tests["redis"] == "CMD redis-cli ping"
    redis_command = services["redis"]["command"]
    password = redis_command[redis_command.index("--requirepass") + 1]
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == password, "redis-cli needs the server's password"
    assert "http://localhost:8765/_sandbox/stats" in tests["sandbox"]
    assert "http://localhost:8080/api/v2/monitor/health" in tests["airflow-apiserver"]
    assert "/api/v2/monitor/health" in [getattr(route, "path", None) for route in public_router.routes]
    port = conf.get_default_value("scheduler", "scheduler_health_check_server_port")
    assert f"http://localhost:{port}/health" in tests["airflow-scheduler"]
    assert common_env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    job_types = ARG_JOB_TYPE_FILTER.kwargs["choices"]
    for name, job in (("airflow-dag-processor", "DagProcessorJob"), ("airflow-triggerer", "TriggererJob")):
        assert f"airflow jobs check --job-type {job}" in tests[name]
        assert job in job_types


def _defines(module: str, attribute: str) -> bool:
    """Whether ``module`` (not imported: found and parsed) binds ``attribute`` at module level, directly
    or through a module ``__getattr__`` that names it."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed"
    assert spec.origin is not None
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.Assign) and attribute in {ast.unparse(target) for target in node.targets}:
            return True
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            return any(isinstance(n, ast.Constant) and n.value == attribute for n in ast.walk(node))
    return False


def test_celery_settings_are_the_celery_providers(compose: dict[str, Any], common_env: dict[str, str]) -> None:
    """Every ``AIRFLOW__CELERY__*`` the file sets is an option of apache-airflow-providers-celery."""
    from airflow.providers.celery.get_provider_info import get_provider_info as celery_provider_info

    options = celery_provider_info()["config"]["celery"]["options"]  # type: ignore[no-untyped-call]
    keys = {key for service in compose["services"].values() for key in _environment(service)}
    celery_keys = {key for key in keys if key.startswith("AIRFLOW__CELERY__")}
    assert celery_keys == {
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    }
    for key in celery_keys:
        assert key.removeprefix("AIRFLOW__CELERY__").lower() in options, key
    assert {"AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"} <= set(common_env), "scheduler too"


def test_celery_broker_is_its_own_redis_database(
    services: dict[str, dict[str, Any]], common_env: dict[str, str]
) -> None:
    """The broker is the ``redis`` service, with its password from .env, in a database the provider's
    ``redis_default`` does not use; with .env.example's values and with the defaults alike."""
    raw = common_env["AIRFLOW__CELERY__BROKER_URL"]
    assert "${REDIS_PASSWORD:?" in raw, "the password comes from .env, required"
    example = env_example()
    secrets_only = {name: example[name] for name in SECRETS}
    provider_db = _environment(services["airflow-init"])["REDIS_DB"]
    for env in (example, secrets_only):
        broker = redis.ConnectionPool.from_url(interpolate(raw, env)).connection_kwargs
        assert (broker["host"], broker["port"], broker["password"]) == ("redis", 6379, example["REDIS_PASSWORD"])
        assert broker["db"] != int(interpolate(provider_db, env)), "Celery's queues and the provider's keys: apart"
    assert redis.ConnectionPool.from_url(interpolate(raw, example)).connection_kwargs["db"] == int(
        example["CELERY_REDIS_DB"]
    )


def test_celery_result_backend_is_the_metadata_database(common_env: dict[str, str]) -> None:
    example = env_example()
    backend = interpolate(common_env["AIRFLOW__CELERY__RESULT_BACKEND"], example)
    assert backend.startswith("db+postgresql://"), "Celery's database backend, as Airflow recommends"
    result = sa.make_url(backend.removeprefix("db+"))
    metadata = sa.make_url(interpolate(common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], example))
    fields = ("host", "port", "database", "username", "password")
    assert [getattr(result, f) for f in fields] == [getattr(metadata, f) for f in fields]


def test_celery_workers_run_what_the_scheduler_would(services: dict[str, dict[str, Any]]) -> None:
    """Same environment (the DAG's ``SERVICETITAN_*`` settings included), DAG folder, logs and start
    order as the scheduler; two replicas or more; Airflow's health check, log server and warm shutdown."""
    from airflow.configuration import conf

    worker, scheduler = services["airflow-worker"], services["airflow-scheduler"]
    env, scheduler_env = _environment(worker), _environment(scheduler)
    assert {key: env.get(key) for key in scheduler_env} == scheduler_env
    assert set(env) - set(scheduler_env) == {"AIRFLOW__CELERY__WORKER_CONCURRENCY", "DUMB_INIT_SETSID"}
    assert _dag_env_settings() <= set(env)
    assert env["DUMB_INIT_SETSID"] == "0", "dumb-init signals the worker alone: Celery's warm shutdown"
    concurrency = conf.get_default_value("celery", "worker_concurrency")
    assert interpolate(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"], {}) == concurrency
    assert env_example()["AIRFLOW_CELERY_WORKER_CONCURRENCY"] == concurrency
    assert worker["volumes"] == scheduler["volumes"]
    assert f"./dags:{DAGS_FOLDER}:ro" in worker["volumes"]
    assert worker["depends_on"] == scheduler["depends_on"]
    replicas = str(worker["deploy"]["replicas"])
    assert int(interpolate(replicas, {})) >= 2
    assert int(interpolate(replicas, env_example())) >= 2
    assert {"scale", "container_name", "hostname", "ports"}.isdisjoint(worker), "`--scale` must add containers"
    assert worker["expose"] == [conf.get_default_value("logging", "worker_log_server_port")]
    health = " ".join(worker["healthcheck"]["test"])
    assert f'celery --app {CELERY_APP}.app inspect ping -d "celery@$${{HOSTNAME}}"' in health
    assert _defines(CELERY_APP, "app")


def test_celery_worker_starts_only_under_celery_executor(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The worker's command, run by bash as the image's entrypoint would, with a stand-in ``airflow``:
    it becomes ``airflow celery worker`` under CeleryExecutor and refuses to start under another one."""
    from airflow.cli.cli_parser import get_parser

    shell, flag, script = services["airflow-worker"]["command"]
    assert (shell, flag) == ("bash", "-c")
    stand_in = tmp_path / "airflow"
    stand_in.write_text('#!/bin/sh\necho "airflow $*"\n')
    stand_in.chmod(0o755)

    def start(executor: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin", "AIRFLOW__CORE__EXECUTOR": executor}
        return subprocess.run(
            ["bash", "-c", interpolate(script, {})], env=env, capture_output=True, text=True, timeout=30
        )

    for executor in ("CeleryExecutor", "airflow.providers.celery.executors.celery_executor.CeleryExecutor"):
        started = start(executor)
        assert (started.returncode, started.stdout, started.stderr) == (0, "airflow celery worker\n", ""), executor
    refused = start("LocalExecutor")
    assert (refused.returncode, refused.stdout) == (64, "")
    assert "AIRFLOW_EXECUTOR=CeleryExecutor" in refused.stderr
    for command in (["celery", "worker"], ["celery", "flower"]):
        assert callable(get_parser().parse_args(command).func), command


def test_flower(services: dict[str, dict[str, Any]]) -> None:
    from flower.urls import handlers

    flower = services["flower"]
    assert flower["command"] == "celery flower"
    assert "http://localhost:5555/healthcheck" in flower["healthcheck"]["test"]
    patterns = {handler[0] if isinstance(handler, tuple) else handler.regex.pattern for handler in handlers}
    assert "/healthcheck" in patterns, "flower's own health endpoint"
    assert {name: rule["condition"] for name, rule in flower["depends_on"].items()} == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "airflow-init": "service_completed_successfully",
    }


def test_sandbox_health_check_url_answers() -> None:
    with SandboxServer(SandboxConfig(tenants=1, records=5)) as sandbox:
        assert httpx.get(f"{sandbox.base_url}/_sandbox/stats").status_code == 200


def test_depends_on_gives_a_valid_start_order(services: dict[str, dict[str, Any]]) -> None:
    graph = {name: service.get("depends_on", {}) for name, service in services.items()}
    for name, needs in graph.items():
        for needed, rule in needs.items():
            assert needed in services, f"{name} depends on unknown {needed}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[needed], f"{name} waits for {needed} to be healthy: it has no check"
            else:
                assert condition == "service_completed_successfully", (name, needed, condition)
                assert services[needed].get("restart") == "no", f"{needed} must run once"
    assert {k: v["condition"] for k, v in graph["airflow-init"].items()} == dict.fromkeys(
        ("postgres", "redis", "sandbox"), "service_healthy"
    )
    for name in AIRFLOW_COMMANDS:
        assert graph[name]["airflow-init"]["condition"] == "service_completed_successfully", name
    for name in set(AIRFLOW_COMMANDS) - {"airflow-apiserver"}:
        assert graph[name]["airflow-apiserver"]["condition"] == "service_healthy", f"{name} needs the execution API"
    order: list[str] = []
    while len(order) < len(graph):
        ready = sorted(n for n in graph if n not in order and set(graph[n]) <= set(order))
        assert ready, f"depends_on has a cycle among {set(graph) - set(order)}"
        order.extend(ready)
    assert order.index("airflow-init") < min(order.index(name) for name in AIRFLOW_COMMANDS)


def test_every_variable_is_in_env_example_and_back(compose: dict[str, Any]) -> None:
    used = variables(compose)
    assert set(used) == set(env_example())
    required = {name for name, ops in used.items() if ":?" in ops}
    assert required == SECRETS
    for name in SECRETS:
        assert used[name] == {":?"}, f"{name} is read without a default everywhere"
        assert env_example()[name].startswith("change-me"), f".env.example: {name} must be a placeholder"
    for text in _strings(compose):
        interpolate(text, env_example())  # every required variable is set in the example


def test_no_literal_secret_in_the_compose_file(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    checked = set()
    for name, service in services.items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*|:-)?\}", value), f"{name}: {key} must come from .env"
                checked.add(key)
    assert {
        "POSTGRES_PASSWORD",
        "REDISCLI_AUTH",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
    } <= checked
    secrets = {env_example()[name] for name in SECRETS}
    urls: set[str] = set()
    for text in _strings(compose):
        for password in re.findall(r"://[^/\s:@]*:([^@\s]*)@", text):
            assert re.fullmatch(r"\$\{[^}]+\}", password), f"literal password in {text!r}"
        # Interpolated, every password of a URL is one of the .env secrets (a ":?" message has spaces).
        for password in re.findall(r"://[^/\s:@]*:([^@\s]*)@", interpolate(text, env_example())):
            assert password in secrets, f"a password not from .env in {text!r}"
            urls.add(text)
    assert len(urls) == 3, "the metadata database, the Celery broker and result backend"


def test_dags_folder_is_mounted_read_only(services: dict[str, dict[str, Any]]) -> None:
    for name in [*AIRFLOW_COMMANDS, "airflow-worker"]:
        assert f"./dags:{DAGS_FOLDER}:ro" in services[name]["volumes"], name
        assert "airflow-logs:/opt/airflow/logs" in services[name]["volumes"], name
    assert SYNC_DAG.is_file()
    assert (DAGS / "servicetitan_downstream_example.py").is_file()


def test_dag_settings_are_the_ones_the_dags_read(common_env: dict[str, str]) -> None:
    read_by_dags = _dag_env_settings()
    assert "SERVICETITAN_WAREHOUSE_CONN_ID" in read_by_dags
    assert {key for key in common_env if key.startswith("SERVICETITAN_")} == read_by_dags
    assert common_env["SERVICETITAN_WAREHOUSE_CONN_ID"] == _dag_constant("WAREHOUSE_CONN_ID")
    defaults = env_example()
    assert defaults["SERVICETITAN_TABLE_PREFIX"] == _dag_constant("TABLE_PREFIX")


def test_provider_settings_are_the_config_section(common_env: dict[str, str]) -> None:
    options = get_provider_info()["config"][CONFIG_SECTION]["options"]
    names = {f"AIRFLOW__{CONFIG_SECTION.upper()}__{option.upper()}" for option in options}
    assert names == {key for key in common_env if key.startswith(f"AIRFLOW__{CONFIG_SECTION.upper()}__")}
    assert common_env["AIRFLOW__SERVICETITAN__REDIS_CONN_ID"] == DEFAULT_REDIS_CONN_ID
    namespace = interpolate(common_env["AIRFLOW__SERVICETITAN__REDIS_NAMESPACE"], env_example())
    assert namespace == options["redis_namespace"]["default"]


def test_init_script_variable_is_the_dags(services: dict[str, dict[str, Any]]) -> None:
    init = _load_init_script()
    assert _dag_constant("CONNECTIONS_VARIABLE") == init.CONNECTIONS_VARIABLE
    assert _environment(services["airflow-init"])["SERVICETITAN_SANDBOX_URL"] == "http://sandbox:8765"


def _init_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    example = env_example()
    return {key: interpolate(value, example) for key, value in _environment(services["airflow-init"]).items()}


def test_init_connections_work_against_a_real_sandbox(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connections the init imports: the ids the code uses, and each sandbox one passes the Test."""
    init = _load_init_script()
    env = _init_env(services)
    platform = init.platform_connections(env)
    assert platform[DEFAULT_REDIS_CONN_ID] == {
        "conn_type": "redis",
        "description": platform[DEFAULT_REDIS_CONN_ID]["description"],
        "host": "redis",
        "port": 6379,
        "password": env_example()["REDIS_PASSWORD"],
        "extra": {"db": int(env_example()["REDIS_DB"])},
    }
    warehouse = platform[_dag_constant("WAREHOUSE_CONN_ID")]
    assert (warehouse["conn_type"], warehouse["host"], warehouse["schema"]) == ("postgres", "postgres", "servicetitan")
    assert set(platform) == {DEFAULT_REDIS_CONN_ID, _dag_constant("WAREHOUSE_CONN_ID")}, "no webhook unless set"
    with_webhook = {
        **env,
        "SERVICETITAN_ALERT_WEBHOOK_CONN_ID": "servicetitan_alerts",
        "SERVICETITAN_ALERT_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/XXXX",
    }
    assert init.platform_connections(with_webhook)["servicetitan_alerts"]["conn_type"] == "http"

    tenants = int(env_example()["SANDBOX_TENANTS"])
    with SandboxServer(SandboxConfig(tenants=tenants, records=5, seed=int(env_example()["SANDBOX_SEED"]))) as sandbox:
        connections = init.sandbox_connections(sandbox.base_url)
        assert sorted(connections) == [f"servicetitan_sandbox_{c.tenant_id}" for c in sandbox.credentials]
        for conn_id, fields in connections.items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
            ok, message = ServiceTitanHook(conn_id, redis_conn_id=None).test_connection()
            assert ok, message


def _decrypted(fernet: Fernet, value: str) -> Any:
    return json.loads(fernet.decrypt(value.encode()))


def test_init_script_initialises_a_real_airflow(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """``initialise()`` on a fresh metadata database with the venv's ``airflow``, twice: the second run
    (a restart of the deployment) keeps a Variable a person edited and still succeeds."""
    init = _load_init_script()
    fernet_key = Fernet.generate_key().decode()
    fernet = Fernet(fernet_key)
    passwords_file = tmp_path / "passwords.json"
    example = env_example()
    with (
        scratch_database("st_compose") as metadata_url,
        SandboxServer(SandboxConfig(tenants=2, records=5, seed=int(example["SANDBOX_SEED"]))) as sandbox,
    ):
        env = {
            **{key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")},
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **_init_env(services),
            "AIRFLOW_HOME": str(tmp_path / "home"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CORE__FERNET_KEY": fernet_key,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
            "SERVICETITAN_SANDBOX_URL": sandbox.base_url,
        }
        created = init.initialise(env)
        assert created == [f"servicetitan_sandbox_{c.tenant_id}" for c in sandbox.credentials]
        assert json.loads(passwords_file.read_text()) == {
            example["AIRFLOW_ADMIN_USERNAME"]: example["AIRFLOW_ADMIN_PASSWORD"]
        }
        assert passwords_file.stat().st_mode & 0o777 == 0o600

        metadata = sa.create_engine(metadata_url)
        try:
            with metadata.connect() as conn:
                rows = conn.execute(sa.text("SELECT conn_id, conn_type, password, extra FROM connection")).all()
                types = {row.conn_id: row.conn_type for row in rows}
                assert types == {
                    DEFAULT_REDIS_CONN_ID: "redis",
                    _dag_constant("WAREHOUSE_CONN_ID"): "postgres",
                    **dict.fromkeys(created, "servicetitan"),
                }
                redis_row = next(row for row in rows if row.conn_id == DEFAULT_REDIS_CONN_ID)
                assert fernet.decrypt(redis_row.password.encode()).decode() == example["REDIS_PASSWORD"]
                assert _decrypted(fernet, redis_row.extra) == {"db": int(example["REDIS_DB"])}
                variable = sa.text("SELECT val FROM variable WHERE key = :key")
                stored = conn.execute(variable, {"key": init.CONNECTIONS_VARIABLE}).scalar_one()
                assert _decrypted(fernet, stored) == created
                edited = fernet.encrypt(json.dumps(created[:1]).encode()).decode()
                conn.execute(
                    sa.text("UPDATE variable SET val = :val WHERE key = :key"),
                    {"val": edited, "key": init.CONNECTIONS_VARIABLE},
                )
                conn.commit()

            assert init.initialise(env) == created
            with metadata.connect() as conn:
                stored = conn.execute(variable, {"key": init.CONNECTIONS_VARIABLE}).scalar_one()
                assert _decrypted(fernet, stored) == created[:1], "a restart must not undo a person's edit"
                assert conn.execute(sa.text("SELECT count(*) FROM connection")).scalar_one() == len(types)
        finally:
            metadata.dispose()


def test_init_writes_the_admin_password_for_the_configured_user(services: dict[str, dict[str, Any]]) -> None:
    init = _load_init_script()
    env = _init_env(services)
    user, role = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(":")
    assert (role, init.admin_passwords(env)) == ("admin", {user: env_example()["AIRFLOW_ADMIN_PASSWORD"]})
    passwords_dir = str(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).parent)
    assert f"airflow-auth:{passwords_dir}" in services["airflow-init"]["volumes"]
    assert f"airflow-auth:{passwords_dir}" in services["airflow-apiserver"]["volumes"], "the api-server checks logins"


def test_postgres_init_script_creates_the_warehouse(services: dict[str, dict[str, Any]]) -> None:
    """Run the script as the postgres image would, on the tests' server, then drop what it made."""
    mount = f"./compose/{POSTGRES_INIT.name}:/docker-entrypoint-initdb.d/10-servicetitan-warehouse.sh:ro"
    assert mount in services["postgres"]["volumes"]
    assert {"WAREHOUSE_USER", "WAREHOUSE_PASSWORD", "WAREHOUSE_DB"} <= set(services["postgres"]["environment"])
    # The system's client, else the one the `servers` extra ships (it raises saying what is missing).
    psql = shutil.which("psql") or str(local_servers.postgres_bindir()[0] / "psql")
    server = sa.make_url(POSTGRES_URL)
    name = f"st_compose_{uuid.uuid4().hex[:8]}"
    env = {
        "PATH": str(Path(psql).parent),
        "PGHOST": server.host or "127.0.0.1",
        "PGPORT": str(server.port or 5432),
        "PGPASSWORD": server.password or "",
        "POSTGRES_USER": server.username or "postgres",
        "POSTGRES_DB": server.database or "postgres",
        "WAREHOUSE_USER": name,
        "WAREHOUSE_PASSWORD": 'it\'s a "quoted" one',
        "WAREHOUSE_DB": name,
    }
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        done = subprocess.run(["bash", str(POSTGRES_INIT)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        with admin.connect() as conn:
            owner = conn.execute(
                sa.text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar_one()
            can_login = conn.execute(sa.text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :name"), {"name": name})
            assert (owner, can_login.scalar_one()) == (name, True)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


def test_dockerfile_builds_the_pinned_airflow_with_the_provider() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG AIRFLOW_IMAGE=apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>[\d.]+)$", text, re.M)
    assert base is not None, "FROM the official image, tagged <airflow>-python<python>"
    assert re.search(r"^FROM \$\{AIRFLOW_IMAGE\}$", text, re.M)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    airflow = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "apache-airflow")
    assert Version(base["airflow"]) in airflow.specifier
    assert Version(base["python"]) in Requirement(f"python{project['requires-python']}").specifier
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in text, "pip must not change the image's Airflow"
    assert '"/opt/airflow/servicetitan-provider[postgres]"' in text
    assert '"apache-airflow-providers-celery"' in text, "`airflow celery` of the workers and flower, slim images too"
    for source in ("pyproject.toml README.md", "airflow_provider_servicetitan"):
        assert f"COPY --chown=airflow:0 {source} /opt/airflow/servicetitan-provider/" in text


def test_readme_documents_docker_compose() -> None:
    readme = (ROOT / "README.md").read_text()
    assert README_SECTION in readme, f"README needs the section {README_SECTION!r}"
    section = readme.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    for text in ("docker compose up", "cp .env.example .env", "docs/compose.md", "redis_default"):
        assert text in section, text
    for text in ("servicetitan_warehouse", "servicetitan_connections", "servicetitan_sandbox_"):
        assert text in section, text
    assert CELERY_UP in section
    assert "(docs/compose.md#scaling-out-with-celeryexecutor)" in section


def test_compose_doc_explains_scaling_out(services: dict[str, dict[str, Any]]) -> None:
    """The section names the profiles, service and variables the file has, and links docs/scaling.md."""
    section = COMPOSE_DOC.read_text().split(SCALING_SECTION, 1)[1].split("\n## ", 1)[0]
    assert CELERY_UP in section
    assert "--profile celery --profile flower" in section
    scaled = re.findall(r"--scale ([\w-]+)=\d+", section)
    assert scaled, "how to add workers"
    for name in scaled:
        assert services[name]["profiles"] == ["celery"], name
    documented = set(re.findall(r"\b(?:AIRFLOW|CELERY|FLOWER|SERVICETITAN)_[A-Z_]+\b", section))
    assert {
        "AIRFLOW_CELERY_WORKERS",
        "AIRFLOW_CELERY_WORKER_CONCURRENCY",
        "CELERY_REDIS_DB",
        "FLOWER_PORT",
    } <= documented
    assert {name for name in documented if "__" not in name} <= set(env_example()), "each one .env sets"
    assert "AIRFLOW__CELERY__WORKER_CONCURRENCY" in section
    assert "(scaling.md)" in section


def _interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: _interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolated(value, env) for value in node]
    return node


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    """The interpolated file against the Compose Specification's schema (no Docker needed)."""
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    document = _interpolated(compose, env_example())
    assert [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)] == []
    # The schema does catch what a typo would break: an unknown key, an unknown condition.
    document["services"]["redis"]["healthcheck"]["intervall"] = "10s"
    document["services"]["airflow-init"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(document))) == 2
