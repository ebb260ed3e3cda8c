"""Fixtures shared by every test: the real Redis the tests talk to, with a key prefix per test.

Tests never use FLUSHALL/FLUSHDB: each test gets its own key prefix and its keys are deleted
afterwards. Redis is required: if it cannot be reached the run stops with a clear message
(``scripts/test-services`` starts one), it is never skipped silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# Airflow reads its home and settings when first imported: give the test session its own home
# (SQLite metadata DB, no examples) before any test module imports Airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="st-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__FERNET_KEY", "x6JmDzXLvQ0BT0Y1yT6cJH1gJwYbCgcTtNtRn9u8RnE=")

import pytest
import redis
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.sandbox import SandboxConfig, SandboxServer
from airflow_provider_servicetitan.storage import SyncStore
from tests.helpers import set_connection
from tests.redis_outage import SwitchableProxy, default_client

REDIS_URL = os.environ.get("SERVICETITAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.exit(
            f"Redis is required by the tests and is not reachable at {REDIS_URL} ({exc}). "
            "Start one with `scripts/test-services` or set SERVICETITAN_TEST_REDIS_URL.",
            returncode=3,
        )
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def key_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A Redis key prefix unique to this test; every key under it is deleted afterwards."""
    prefix = f"sttest:{uuid.uuid4().hex[:12]}"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., SandboxServer]]:
    """Start a sandbox with the given ``SandboxConfig`` fields; stopped after the test."""
    with ExitStack() as stack:

        def start(**config: Any) -> SandboxServer:
            settings: dict[str, Any] = {"tenants": 2, "records": 120, "seed": 7, "recent_changes_delay": 0, **config}
            return stack.enter_context(SandboxServer(SandboxConfig(**settings)))

        yield start


@pytest.fixture
def sandbox(start_sandbox: Callable[..., SandboxServer]) -> SandboxServer:
    return start_sandbox()


# Databases: every store test runs on a SQLite file and on the real PostgreSQL (a schema per test).
POSTGRES_URL = os.environ.get("SERVICETITAN_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        engine.dispose()
        pytest.exit(
            f"PostgreSQL is required by the storage tests and is not reachable at "
            f"{make_url(POSTGRES_URL).render_as_string(hide_password=True)} ({exc.__class__.__name__}: {exc}). "
            "Start one with `scripts/test-services` or set SERVICETITAN_TEST_POSTGRES_URL.",
            returncode=3,
        )
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_engine: Engine) -> Iterator[str]:
    """A URL whose connections see only a fresh schema of their own."""
    schema = f"st_test_{uuid.uuid4().hex[:12]}"
    with postgres_engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with postgres_engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    # Fixtures are requested lazily: tmp_path must not be set up for a test that pytest.exit() interrupts.
    if request.param == "sqlite":
        tmp_path: Path = request.getfixturevalue("tmp_path")
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[SyncStore]:
    with SyncStore(store_url) as sync_store:
        sync_store.create_tables()
        yield sync_store


@pytest.fixture
def make_client(redis_client: redis.Redis, key_prefix: str) -> Iterator[Callable[..., ServiceTitanClient]]:
    """Build a client for a credential with fast, deterministic-enough test settings."""
    clients: list[ServiceTitanClient] = []

    def make(
        credentials: ServiceTitanCredentials,
        *,
        shared: redis.Redis | None = redis_client,
        retry_policy: RetryPolicy | None = None,
        breaker_config: BreakerConfig | None = None,
        **token_args: Any,
    ) -> ServiceTitanClient:
        tokens = TokenManager(credentials, shared, namespace=key_prefix, **token_args)
        breaker = CircuitBreaker(
            f"tenant-{credentials.tenant_id}",
            shared,
            config=breaker_config or BreakerConfig(failure_threshold=50, minimum_calls=1000),
            namespace=key_prefix,
            classify=classify_servicetitan_error,
        )
        client = ServiceTitanClient(
            tokens,
            breaker=breaker,
            retry_policy=retry_policy or RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05, max_elapsed=30),
            timeout=(2.0, 5.0),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# Airflow: one migrated metadata DB per session; connections as environment variables.
@pytest.fixture(scope="session")
def airflow_db() -> None:
    """The session's Airflow metadata DB (SQLite in the temp ``AIRFLOW_HOME``), migrated once."""
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"airflow db migrate failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture
def redis_connection(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> str:
    parsed = urlparse(redis_url)
    set_connection(
        monkeypatch,
        "st_test_redis",
        conn_type="redis",
        host=parsed.hostname,
        port=parsed.port,
        extra={"db": int(parsed.path.strip("/") or 0)},
    )
    return "st_test_redis"


@pytest.fixture
def proxy(redis_url: str) -> Iterator[SwitchableProxy]:
    """A switchable TCP proxy in front of the test Redis (switch it off for an outage)."""
    with SwitchableProxy.to_redis(redis_url) as switchable:
        yield switchable


@pytest.fixture
def caller_client(proxy: SwitchableProxy, redis_url: str) -> Iterator[redis.Redis]:
    """A client through ``proxy`` as a caller may build it: redis-py's defaults, retries included."""
    client = default_client(proxy.port, redis_url)
    yield client
    client.close()
