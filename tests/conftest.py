"""Fixtures shared by every test: the real Redis the tests talk to, with a key prefix per test.

Tests never use FLUSHALL/FLUSHDB: each test gets its own key prefix and its keys are deleted
afterwards. Redis is required: if it cannot be reached the run stops with a clear message
(``scripts/test-services`` starts one), it is never skipped silently.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

# Airflow reads its home and settings when first imported: give the test session its own home
# (SQLite metadata DB, no examples) before any test module imports Airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="st-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__FERNET_KEY", "x6JmDzXLvQ0BT0Y1yT6cJH1gJwYbCgcTtNtRn9u8RnE=")

import pytest
import redis

from airflow_provider_servicetitan.sandbox import SandboxConfig, SandboxServer

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
