"""``make demo`` and ``make airflow``: the provider against a local ServiceTitan sandbox, on a fresh machine.

``demo`` starts a sandbox (several tenants, the ``chaos`` fault profile on the last one), a Redis (the
one it finds, else one started by ``scripts/local_servers.py``) and a local alert webhook, prepares an
Airflow home (SQLite), registers the connections with ``servicetitan-sandbox airflow-connections``,
runs the ``servicetitan_sync`` DAG once with ``airflow dags test`` and prints what happened per
credential and resource, and whether the warehouse equals the sandbox. ``airflow`` prepares the same
and leaves a full local Airflow running (UI, scheduler, dag-processor, triggerer) until Ctrl+C.

Everything it starts is stopped when it ends, on Ctrl+C (SIGINT), SIGTERM or a failure. Airflow's
output goes to ``<dir>/airflow-home/*.log``; the path is printed when something fails.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import httpx
import redis
from demo_airflow import ADMIN_USER, AirflowCommandError, AirflowHome, Services, free_port
from demo_alerts import AlertReceiver
from demo_summary import Credential, credential_reports, render
from local_servers import ensure_redis

from airflow_provider_servicetitan.sandbox import SandboxConfig, SandboxServer

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_CLI = Path(sys.executable).with_name("servicetitan-sandbox")
DAG_ID = "servicetitan_sync"
PREFIX = "servicetitan_demo_"
WAREHOUSE_CONN_ID = "servicetitan_warehouse"
REDIS_CONN_ID = "servicetitan_demo_redis"
ALERTS_CONN_ID = "servicetitan_demo_alerts"
TABLE_PREFIX = "servicetitan"
CHAOS = "chaos"
OPEN_SECONDS = 5
_READY_TIMEOUT = 300.0
_POLL = 1.0


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and where to look."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("mode", nargs="?", choices=("demo", "airflow"), default="demo", help="(default: %(default)s)")
    add("--dir", type=Path, default=ROOT / ".demo", help="working directory, emptied first (default: .demo)")
    add("--redis-url", default="redis://127.0.0.1:6379/8", help="Redis to use, or to start (default: %(default)s)")
    add("--namespace", default=None, help="Redis key prefix (default: a new one per run, deleted at the end)")
    add("--tenants", type=int, default=3, help="sandbox tenants, the last one under chaos (default: %(default)s)")
    add("--records", type=int, default=200, help="records per tenant and resource (default: %(default)s)")
    add("--port", type=int, default=8080, help="api-server port for `airflow`, another if busy (default: %(default)s)")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Stage:
    """What the demo set up: the sandbox, its credentials, the Airflow home and where data lands."""

    sandbox: SandboxServer
    credentials: list[Credential]
    home: AirflowHome
    warehouse_url: str
    alerts: AlertReceiver
    redis_url: str


def say(text: str) -> None:
    print(text, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def chaos_tenant(tenants: int) -> int:
    """The tenant under chaos: the last one (tenant ids are 1001, 1002, ...)."""
    return 1000 + tenants


def start_sandbox(stack: ExitStack, tenants: int, records: int) -> SandboxServer:
    """Several tenants; the last one under the ``chaos`` profile (time-outs held 2 s, not 30 s)."""
    config = SandboxConfig(
        tenants=tenants,
        records=records,
        seed=7,
        faults=CHAOS,
        fault_overrides={"tenants": str(chaos_tenant(tenants)), "timeout_hold": 2, "fault_seed": 7},
        export_page_size=50,
        recent_changes_delay=0,
    )
    sandbox: SandboxServer = stack.enter_context(SandboxServer(config))
    say(f"sandbox:  {sandbox.base_url} ({tenants} tenants, fault profile '{CHAOS}' on tenant {chaos_tenant(tenants)})")
    return sandbox


def use_redis(stack: ExitStack, url: str, state_dir: Path, namespace: str) -> str:
    """The Redis at ``url`` if it answers, else one started by ``scripts/local_servers.py``; returns its URL.

    The demo's keys (``namespace``) are deleted at the end; a Redis the demo started is stopped.
    """
    server = ensure_redis(url, state_dir)
    if server.started:
        stack.callback(server.stop)
    stack.callback(_delete_keys, server.url, namespace)
    say(f"redis:    {server.url} ({server.how}), key prefix {namespace}")
    return str(server.url)


def _delete_keys(url: str, namespace: str) -> None:
    """Only the demo's keys: others may share the database (never FLUSHDB)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"*{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # a Redis we started is already gone, and its keys with it
    finally:
        client.close()


def sandbox_connections(home: AirflowHome, sandbox: SandboxServer) -> dict[str, dict[str, object]]:
    """The ``servicetitan`` connections, as ``servicetitan-sandbox airflow-connections`` writes them."""
    output = home.root / "servicetitan-connections.json"
    with home.log.open("a") as log:
        subprocess.run(  # noqa: S603 (the venv's console script)
            [
                str(SANDBOX_CLI),
                "airflow-connections",
                "--url",
                sandbox.base_url,
                "--prefix",
                PREFIX,
                "--output",
                output,
            ],
            stdout=log,
            stderr=log,
            check=True,
            timeout=60,
        )
    found: dict[str, dict[str, object]] = json.loads(output.read_text())
    return found


def with_demo_tuning(connections: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """The connections with a breaker that re-admits a probe after 5 s (default 30 s): a short demo."""
    tuned = {}
    for conn_id, fields in connections.items():
        extra = json.loads(str(fields["extra"]))
        tuned[conn_id] = {**fields, "extra": json.dumps({**extra, "breaker": {"open_seconds": OPEN_SECONDS}})}
    return tuned


def support_connections(redis_url: str, warehouse: Path, alerts: AlertReceiver) -> dict[str, dict[str, object]]:
    """The warehouse (a SQLite file), the shared Redis and the alert webhook."""
    parts = urlsplit(redis_url)
    return {
        WAREHOUSE_CONN_ID: {"conn_type": "sqlite", "host": str(warehouse)},
        REDIS_CONN_ID: {
            "conn_type": "redis",
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 6379,
            "extra": json.dumps({"db": int(parts.path.strip("/") or 0)}),
        },
        ALERTS_CONN_ID: {"conn_type": "http", "host": alerts.url},
    }


def register(home: AirflowHome, connections: dict[str, dict[str, object]], credentials: list[str]) -> None:
    file = home.root / "connections.json"
    file.write_text(json.dumps(connections, indent=2))
    home.run("connections", "import", "--overwrite", str(file))
    home.run("variables", "set", "servicetitan_connections", json.dumps(credentials))


def demo_credentials(connections: dict[str, dict[str, object]], chaos: int) -> list[Credential]:
    """Each ``servicetitan`` connection with its tenant and the faults it runs under."""
    credentials = []
    for conn_id, fields in connections.items():
        tenant = int(json.loads(str(fields["extra"]))["tenant_id"])
        credentials.append(Credential(conn_id, tenant, CHAOS if tenant == chaos else "none"))
    return credentials


def prepare(stack: ExitStack, args: argparse.Namespace, port: int) -> Stage:
    """Sandbox, Redis, alert webhook, Airflow home with its metadata DB, connections and Variable."""
    workdir = args.dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    namespace = args.namespace or f"st_demo_{uuid.uuid4().hex[:8]}"
    sandbox = start_sandbox(stack, args.tenants, args.records)
    redis_url = use_redis(stack, args.redis_url, workdir / "redis", namespace)
    alerts = stack.enter_context(AlertReceiver())
    say(f"alerts:   {alerts.url} (a local Slack-compatible webhook)")
    warehouse = workdir / "warehouse.db"
    warehouse.unlink(missing_ok=True)
    settings = {
        "AIRFLOW__SERVICETITAN__REDIS_CONN_ID": REDIS_CONN_ID,
        "AIRFLOW__SERVICETITAN__REDIS_NAMESPACE": namespace,
        "SERVICETITAN_WAREHOUSE_CONN_ID": WAREHOUSE_CONN_ID,
        "SERVICETITAN_TABLE_PREFIX": TABLE_PREFIX,
        "SERVICETITAN_ALERT_WEBHOOK_CONN_ID": ALERTS_CONN_ID,
    }
    home = AirflowHome(workdir / "airflow-home", settings, port=port)
    say(f"airflow:  home {home.root} (SQLite), log {home.log}")
    home.run("db", "migrate")
    found = with_demo_tuning(sandbox_connections(home, sandbox))
    register(home, {**found, **support_connections(redis_url, warehouse, alerts)}, list(found))
    credentials = demo_credentials(found, chaos_tenant(sandbox.config.tenants))
    say(f"          {len(credentials)} ServiceTitan connections and the Variable servicetitan_connections registered")
    return Stage(sandbox, credentials, home, f"sqlite:///{warehouse}", alerts, redis_url)


def run_demo(stage: Stage) -> int:
    """One run of the DAG through Airflow, then the summary; 0 when the warehouse equals the sandbox."""
    say(f"running:  airflow dags test {DAG_ID} (output in {stage.home.log}) ...")
    began = time.monotonic()
    try:
        # `dags test` runs a deferred task's trigger in line, where Airflow 3.3 finds connections only in
        # the environment (not the metadata DB): the breaker trigger's Redis connection goes there too.
        redis_env = {f"AIRFLOW_CONN_{REDIS_CONN_ID.upper()}": stage.redis_url}
        stage.home.run("dags", "test", DAG_ID, extra_env=redis_env)
        outcome = "succeeded"
    except AirflowCommandError:
        outcome = "failed (a credential's sync or recovery failed; see the log)"
    say(f"          the DAG run {outcome} in {time.monotonic() - began:.0f}s\n")
    received = stage.alerts.received()
    reports = credential_reports(stage.warehouse_url, TABLE_PREFIX, stage.sandbox.admin, stage.credentials, received)
    say(render(reports, stage.sandbox.admin.stats(), received))
    if any(report.differs for report in reports):
        say(f"\nAirflow's output: {stage.home.log}")
        return 1
    return 0


def wait_until_healthy(services: Services) -> None:
    """Poll the api-server's health endpoint until every component says healthy."""
    deadline = time.monotonic() + _READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if services.exited():
            raise DemoError(f"airflow {', '.join(services.exited())} exited; see {services.home.root}/*.log")
        try:
            health = httpx.get(f"{services.home.base_url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError) as exc:
            last = str(exc)
        else:
            names = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            statuses = {name: (health.get(name) or {}).get("status") for name in names}
            if all(status == "healthy" for status in statuses.values()):
                return
            last = str(statuses)
        time.sleep(_POLL)
    raise DemoError(f"Airflow was not healthy in {_READY_TIMEOUT:.0f}s ({last}); see {services.home.root}/*.log")


def trigger_first_run(home: AirflowHome) -> str:
    """Log in as the admin, wait until the dag-processor has stored the DAG, trigger a run; its id.

    An hourly schedule would first run at the next full hour: the user sees a run at once.
    """
    with httpx.Client(base_url=home.base_url, timeout=30) as http:
        login = http.post("/auth/token", json={"username": ADMIN_USER, "password": home.password})
        login.raise_for_status()
        http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        deadline = time.monotonic() + _READY_TIMEOUT
        while http.get(f"/api/v2/dags/{DAG_ID}").status_code != httpx.codes.OK:
            if time.monotonic() > deadline:
                raise DemoError(f"the DAG {DAG_ID} was not parsed in time; see {home.root}/dag-processor.log")
            time.sleep(_POLL)
        run = http.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None})
        run.raise_for_status()
        run_id: str = run.json()["dag_run_id"]
    return run_id


def run_airflow(stack: ExitStack, stage: Stage) -> int:
    """Start the services, print where to log in, serve until Ctrl+C."""
    services = Services(stage.home)
    stack.callback(services.stop)
    say("starting: api-server, scheduler, dag-processor, triggerer (about a minute) ...")
    services.start()
    wait_until_healthy(services)
    run_id = trigger_first_run(stage.home)
    say(
        f"\nAirflow is running at {stage.home.base_url}  (login: {ADMIN_USER} / {stage.home.password})\n"
        f"  DAG {DAG_ID} is unpaused (hourly); a first run was triggered: {run_id}\n"
        f"  {stage.home.base_url}/dags/{DAG_ID}\n"
        f"  sandbox {stage.sandbox.base_url}, alerts received at {stage.alerts.url}\n"
        f"  logs: {stage.home.root}/*.log\n"
        "Press Ctrl+C to stop everything."
    )
    while not services.exited():
        time.sleep(_POLL)
    raise DemoError(f"airflow {', '.join(services.exited())} exited; see {stage.home.root}/*.log")


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """Ctrl+C (SIGINT) and SIGTERM end the demo through its cleanup, even when started with SIGINT ignored
    (a background job of a non-interactive shell)."""
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, _interrupt) for signum in stop_signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    try:
        with stopping_on_signals(), ExitStack() as stack:
            stack.callback(say, "stopped:  everything the demo started")
            port = free_port(args.port) if args.mode == "airflow" else args.port
            stage = prepare(stack, args, port)
            status = run_demo(stage) if args.mode == "demo" else run_airflow(stack, stage)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError, redis.RedisError) as exc:
        # RuntimeError: DemoError, AirflowCommandError, local_servers.ServerUnavailable, the sandbox's.
        say(f"demo failed: {exc.__class__.__name__}: {exc}")
        say(f"Airflow's output: {args.dir.resolve() / 'airflow-home'}/*.log")
        return 1
    say(f"done in {time.monotonic() - began:.0f}s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
