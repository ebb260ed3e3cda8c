"""redis_from_connection and its async twin: an Airflow Redis connection means what it means to
RedisHook, plus the URI path's db, for sync and async clients alike."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import redis
import redis.asyncio

from airflow_provider_servicetitan.hooks.redis import async_redis_from_connection, redis_from_connection
from airflow_provider_servicetitan.resilience.shared_state import FAIL_FAST_TIMEOUT_SECONDS, fail_fast_client
from tests.helpers import set_connection

# Databases the tests below write to (the suite itself uses db 5); only keys under the test's prefix.
URI_DB = 8
FORM_DB = 7


@pytest.fixture
def redis_address(redis_url: str) -> tuple[str, int]:
    parsed = urlparse(redis_url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


@pytest.fixture
def database(redis_address: tuple[str, int], key_prefix: str) -> Iterator[dict[int, redis.Redis]]:
    """Plain clients on the test databases, by number; the test's keys are deleted from each afterwards."""
    host, port = redis_address
    clients = {db: redis.Redis(host=host, port=port, db=db) for db in (URI_DB, FORM_DB)}
    yield clients
    for client in clients.values():
        keys = list(client.scan_iter(match=f"{key_prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def written_to(client: redis.Redis, key: str, databases: dict[int, redis.Redis]) -> list[int]:
    """The test databases in which a key written through ``client`` landed."""
    client.set(key, b"here")
    client.close()
    return [db for db, plain in databases.items() if plain.get(key) == b"here"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", URI_DB), (f"?db={FORM_DB}", FORM_DB)],
    ids=["the database of a URI path is used", "a db in the extra wins over the URI path"],
)
def test_the_database_of_a_uri(
    monkeypatch: pytest.MonkeyPatch,
    redis_address: tuple[str, int],
    key_prefix: str,
    database: dict[int, redis.Redis],
    query: str,
    expected: int,
) -> None:
    host, port = redis_address
    monkeypatch.setenv("AIRFLOW_CONN_ST_URI_REDIS", f"redis://{host}:{port}/{URI_DB}{query}")

    client = redis_from_connection("st_uri_redis")

    assert written_to(client, f"{key_prefix}:uri", database) == [expected]


def test_the_fields_of_the_connection_form_are_used(
    monkeypatch: pytest.MonkeyPatch,
    redis_address: tuple[str, int],
    key_prefix: str,
    database: dict[int, redis.Redis],
) -> None:
    host, port = redis_address
    set_connection(monkeypatch, "st_form_redis", conn_type="redis", host=host, port=port, extra={"db": FORM_DB})

    client = redis_from_connection("st_form_redis")

    assert fail_fast_client(client) is client
    assert written_to(client, f"{key_prefix}:form", database) == [FORM_DB]


def test_tls_settings_reach_redis_py(monkeypatch: pytest.MonkeyPatch) -> None:
    tls = {
        "ssl": True,
        "ssl_cert_reqs": "none",
        "ssl_ca_certs": "/etc/redis/ca.pem",
        "ssl_certfile": "/etc/redis/client.pem",
        "ssl_keyfile": "/etc/redis/client.key",
        "ssl_check_hostname": False,
    }
    set_connection(monkeypatch, "st_tls_redis", conn_type="redis", host="redis.example", port=6380, extra=tls)

    client = redis_from_connection("st_tls_redis")

    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    settings = pool.connection_kwargs
    assert (settings["host"], settings["port"]) == ("redis.example", 6380)
    assert {name: settings[name] for name in tls if name != "ssl"} == {
        name: value for name, value in tls.items() if name != "ssl"
    }
    assert fail_fast_client(client) is client  # TLS and fail-fast settings together, nothing connected yet


def test_a_connection_without_host_or_port_means_the_local_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "st_bare_redis", conn_type="redis")

    settings = redis_from_connection("st_bare_redis").connection_pool.connection_kwargs

    assert (settings["host"], settings["port"], settings["db"]) == ("127.0.0.1", 6379, None)


def test_a_cluster_connection_is_refused_with_what_to_change(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "st_cluster_redis", conn_type="redis", host="127.0.0.1", extra={"cluster": True})

    with pytest.raises(ValueError, match=r"'st_cluster_redis' is a Redis Cluster.*remove \"cluster\""):
        redis_from_connection("st_cluster_redis")


# The async client (for triggers): the same rules, read with the async connection lookup.


def async_client(conn_id: str) -> redis.asyncio.Redis:
    """The async client for ``conn_id``, built (not connected) in an event loop of its own."""
    return asyncio.run(async_redis_from_connection(conn_id))


def written_async(conn_id: str, key: str, databases: dict[int, redis.Redis]) -> list[int]:
    async def write() -> None:
        client = await async_redis_from_connection(conn_id)
        try:
            await client.set(key, b"here")
        finally:
            await client.aclose()

    asyncio.run(write())
    return [db for db, plain in databases.items() if plain.get(key) == b"here"]


@pytest.mark.parametrize(
    ("uri_query", "extra", "expected"),
    [("", None, URI_DB), (f"?db={FORM_DB}", None, FORM_DB), (None, {"db": FORM_DB}, FORM_DB)],
    ids=["uri-path", "uri-extra-wins", "form"],
)
def test_the_async_client_follows_the_same_database_rules(
    monkeypatch: pytest.MonkeyPatch,
    redis_address: tuple[str, int],
    key_prefix: str,
    database: dict[int, redis.Redis],
    uri_query: str | None,
    extra: dict[str, int] | None,
    expected: int,
) -> None:
    host, port = redis_address
    if uri_query is not None:
        monkeypatch.setenv("AIRFLOW_CONN_ST_ASYNC_REDIS", f"redis://{host}:{port}/{URI_DB}{uri_query}")
    else:
        set_connection(monkeypatch, "st_async_redis", conn_type="redis", host=host, port=port, extra=extra)

    assert written_async("st_async_redis", f"{key_prefix}:async", database) == [expected]


def test_the_async_client_gets_the_tls_settings_and_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    tls = {"ssl_cert_reqs": "none", "ssl_ca_certs": "/etc/redis/ca.pem", "ssl_check_hostname": False}
    extra = {"ssl": True, **tls}
    set_connection(monkeypatch, "st_tls_redis", conn_type="redis", host="redis.example", port=6380, extra=extra)

    pool = async_client("st_tls_redis").connection_pool

    assert pool.connection_class is redis.asyncio.SSLConnection
    settings = pool.connection_kwargs
    assert (settings["host"], settings["port"]) == ("redis.example", 6380)
    assert {name: settings[name] for name in tls} == tls
    assert (settings["socket_timeout"], settings["retry_on_error"]) == (FAIL_FAST_TIMEOUT_SECONDS, [])


def test_the_async_client_of_a_bare_connection_is_the_local_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "st_bare_redis", conn_type="redis")

    settings = async_client("st_bare_redis").connection_pool.connection_kwargs

    assert (settings["host"], settings["port"]) == ("127.0.0.1", 6379)


def test_the_async_builder_refuses_a_cluster_connection_too(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "st_cluster_redis", conn_type="redis", host="127.0.0.1", extra={"cluster": True})

    with pytest.raises(ValueError, match="'st_cluster_redis' is a Redis Cluster"):
        async_client("st_cluster_redis")
