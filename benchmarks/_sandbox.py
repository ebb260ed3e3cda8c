"""What the benchmarks share: a sandbox in its own process, our client stack as the hook builds it, truth checks.

The sandbox runs as ``servicetitan-sandbox`` in a child process (so its CPU and its GIL are not the
benchmark's); its banner, which holds client secrets, is read here and never printed. Knobs that
change during a benchmark (latency, rate limit, fault profile) go through its admin API.
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from airflow_provider_servicetitan.client import client as client_module
from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.sandbox.admin import SandboxAdmin
from airflow_provider_servicetitan.storage.dialects import POSTGRES_DRIVERNAME
from airflow_provider_servicetitan.storage.store import SyncStore

SANDBOX_CLI = Path(sys.executable).with_name("servicetitan-sandbox")
_LISTENING = re.compile(r"listening on (http://\S+)")
_START_TIMEOUT = 300.0  # 100k records per resource take ~20 s to generate on a small machine


class SandboxProcess:
    """``servicetitan-sandbox`` on a free port in a child process, for a ``with`` block.

    :param records: records per tenant per resource.
    :param rate_limit: API calls/s per tenant (raised far above any load by default: it must not bind).
    :param token_rate_limit: token requests/min per client id.
    :param knobs: fault knobs (``--fault KEY=VALUE``), e.g. ``{"latency": 0.05}``.
    """

    def __init__(
        self,
        *,
        records: int,
        tenants: int = 1,
        seed: int = 7,
        export_page_size: int = 500,
        rate_limit: int = 1_000_000,
        token_rate_limit: int = 30,
        faults: str = "none",
        knobs: dict[str, Any] | None = None,
    ) -> None:
        self.args = [
            str(SANDBOX_CLI),
            "--port=0",
            f"--tenants={tenants}",
            f"--records={records}",
            f"--seed={seed}",
            f"--export-page-size={export_page_size}",
            f"--rate-limit={rate_limit}",
            f"--token-rate-limit={token_rate_limit}",
            f"--faults={faults}",
        ] + [f"--fault={key}={value}" for key, value in (knobs or {}).items()]
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self.base_url = ""
        self.admin = SandboxAdmin("http://127.0.0.1:9")

    def __enter__(self) -> SandboxProcess:
        self._stderr = tempfile.TemporaryFile("w+")
        self._process = subprocess.Popen(  # noqa: S603 (the venv's console script)
            self.args, stdout=subprocess.PIPE, stderr=self._stderr, text=True, start_new_session=True
        )
        try:
            self.base_url = self._read_banner(self._process)
        except BaseException:
            self.__exit__()
            raise
        self.admin = SandboxAdmin(self.base_url)
        return self

    def _read_banner(self, process: subprocess.Popen[str]) -> str:
        """The base URL from the banner; the rest of it (secrets) is read and dropped."""
        if process.stdout is None:
            raise RuntimeError("servicetitan-sandbox was started without a stdout pipe")
        deadline = time.monotonic() + _START_TIMEOUT
        base_url = ""
        for line in process.stdout:
            found = _LISTENING.search(line)
            if found:
                base_url = found.group(1).rstrip("/")
            if line.startswith("Press Ctrl+C"):
                return base_url
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"servicetitan-sandbox did not start (exit status {process.poll()}): {self._errors()}")

    def _errors(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def credentials(self, index: int = 0) -> ServiceTitanCredentials:
        """Credential ``index`` of the sandbox, as a user fills in the connection."""
        config = self.admin.config()
        credential = config["credentials"][index]
        return ServiceTitanCredentials(
            client_id=credential["client_id"],
            client_secret=credential["client_secret"],
            app_key=config["app_key"],
            tenant_id=int(credential["tenant_id"]),
            environment="integration",
            auth_url=f"{self.base_url}/connect/token",
            api_url=self.base_url,
        )

    def api_requests(self) -> int:
        """API requests served since the last reset (token requests not counted)."""
        stats = self.admin.stats()
        return int(stats["requests_total"]) - int(stats["token_requests_total"])


def credential_fields(credentials: ServiceTitanCredentials) -> dict[str, Any]:
    """Plain values that rebuild ``credentials`` in a child process (never printed)."""
    return {
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
        "app_key": credentials.app_key,
        "tenant_id": credentials.tenant_id,
        "environment": credentials.environment,
        "auth_url": credentials.auth_url,
        "api_url": credentials.api_url,
    }


def our_client(
    credentials: ServiceTitanCredentials,
    redis_client: redis.Redis | None,
    namespace: str,
    retry_policy: RetryPolicy | None = None,
    breaker_config: BreakerConfig | None = None,
    rate_per_second: float | None = None,
) -> ServiceTitanClient:
    """Our client as ``ServiceTitanHook.get_conn`` builds it with default settings (without Airflow):
    shared token cache and circuit breaker in Redis, the ``default`` retry preset, and the shared API
    rate limiter at its default rate where the client has one (see :func:`stack`)."""
    tokens = TokenManager(credentials, redis_client, namespace=namespace)
    limiter = _api_rate_limiter()
    extra: dict[str, Any] = {}
    if limiter is not None:
        rate = {} if rate_per_second is None else {"rate_per_second": rate_per_second}
        extra["rate_limiter"] = limiter(credentials, redis_client, namespace=namespace, **rate)
    breaker = CircuitBreaker(
        f"tenant-{credentials.tenant_id}-{credentials.cache_id[:8]}",
        redis_client,
        config=breaker_config or BreakerConfig(),
        namespace=namespace,
        classify=classify_servicetitan_error,
    )
    return ServiceTitanClient(tokens, breaker=breaker, retry_policy=retry_policy or RetryPolicy.default(), **extra)


def _api_rate_limiter() -> Any:
    """``client.api_rate_limiter`` if the client takes a ``rate_limiter`` (both are recent), else ``None``."""
    limiter = getattr(client_module, "api_rate_limiter", None)
    if limiter is None or "rate_limiter" not in inspect.signature(ServiceTitanClient).parameters:
        return None
    return limiter


def stack() -> str:
    """What :func:`our_client` is made of, for the notes of the table."""
    parts = "tokens + breaker in Redis, default retries"
    return parts + (", shared rate limiter (default rate)" if _api_rate_limiter() is not None else "")


class Factory:
    """The credential and its client for ``sync_credential`` (the hook's role), one client per sync."""

    def __init__(
        self,
        credentials: ServiceTitanCredentials,
        redis_client: redis.Redis | None,
        namespace: str,
        rate_per_second: float | None = None,
    ) -> None:
        self.credentials = credentials
        self.redis_client = redis_client
        self.namespace = namespace
        self.rate_per_second = rate_per_second
        self.clients: list[ServiceTitanClient] = []

    def get_credentials(self) -> ServiceTitanCredentials:
        return self.credentials

    def get_conn(self) -> ServiceTitanClient:
        client = our_client(self.credentials, self.redis_client, self.namespace, rate_per_second=self.rate_per_second)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            release(client)
        self.clients.clear()


def release(client: ServiceTitanClient) -> None:
    """Write what the client's breaker buffers (else it is written at exit, after the namespace's
    keys were deleted), then close its sessions."""
    flush = getattr(client.breaker, "flush", None)
    if flush is not None:
        flush()
    client.close()


def new_namespace(prefix: str) -> str:
    return f"stbench-{prefix}-{uuid.uuid4().hex[:8]}"


@contextmanager
def redis_namespace(url: str, prefix: str) -> Iterator[tuple[redis.Redis, str]]:
    """A Redis client and a fresh key namespace, whose keys are deleted afterwards."""
    client = redis.Redis.from_url(url)
    namespace = new_namespace(prefix)
    try:
        yield client, namespace
    finally:
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@contextmanager
def postgres_database(url: str, prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database on the server of ``url``; its URL, with the driver the warehouse
    connection uses when ``url`` names none (``postgresql://``). Dropped afterwards."""
    name = f"stbench_{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            fresh = make_url(url).set(database=name)
            if fresh.drivername == "postgresql":
                fresh = fresh.set(drivername=POSTGRES_DRIVERNAME)
            yield fresh.render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def truth_mismatch(
    sandbox: SandboxProcess, store: SyncStore, tenant_id: int, resources: Sequence[str]
) -> dict[str, str]:
    """Per resource whose stored records differ from the sandbox's truth (count, ids): what differs."""
    problems: dict[str, str] = {}
    for resource in resources:
        truth = sorted(int(record["id"]) for record in sandbox.admin.truth(tenant_id, resource))
        stored = store.record_ids(tenant_id, resource)
        if stored != truth:
            missing = len(set(truth) - set(stored))
            extra = len(set(stored) - set(truth))
            problems[resource] = f"{len(stored)} stored vs {len(truth)} true ({missing} missing, {extra} extra)"
    return problems


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
