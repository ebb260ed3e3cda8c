"""Redis, else per-process state until it answers again: the policy every user of Redis follows,
and the fail-fast copy of a caller's client, against the real Redis (through the on/off proxy)."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from airflow_provider_servicetitan.hooks.redis import redis_from_connection
from airflow_provider_servicetitan.resilience.shared_state import (
    DEFAULT_REDIS_RECHECK_SECONDS,
    FAIL_FAST_TIMEOUT_SECONDS,
    SharedRedis,
    fail_fast_async_client,
    fail_fast_client,
)
from tests.helpers import FakeClock, set_connection
from tests.redis_outage import SwitchableProxy, redis_db

LOGGER = "tests.shared_state"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def acl_user(redis_client: redis.Redis, key_prefix: str) -> Iterator[tuple[str, str]]:
    """A Redis user of its own (name, password), allowed only the keys of this test."""
    username, password = f"sttest-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    redis_client.acl_setuser(
        username, enabled=True, passwords=[f"+{password}"], keys=[f"{key_prefix}:*"], commands=["+@all"]
    )
    yield username, password
    redis_client.acl_deluser(username)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def infos_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


def shared(
    client: redis.Redis | None,
    clock: FakeClock,
    *,
    recheck_seconds: float = DEFAULT_REDIS_RECHECK_SECONDS,
    on_recovery: Callable[[], None] | None = None,
) -> SharedRedis[redis.Redis]:
    return SharedRedis(
        client,
        "test cache",
        degraded="values are kept per process",
        recheck_seconds=recheck_seconds,
        clock=clock,
        log=logging.getLogger(LOGGER),
        on_recovery=on_recovery,
    )


def ping(shared_redis: SharedRedis[redis.Redis]) -> str:
    """``"redis"`` if Redis answered, ``"local"`` if the caller was told to use its own state."""
    return shared_redis.run(lambda client: "redis" if client.ping() else "no", lambda: "local")


# The fail-fast copy of a caller's client


def test_the_copy_keeps_target_db_and_credentials(
    redis_url: str, redis_client: redis.Redis, key_prefix: str, acl_user: tuple[str, str]
) -> None:
    username, password = acl_user
    caller = redis.Redis(
        host="127.0.0.1",
        port=urlparse(redis_url).port or 6379,
        db=redis_db(redis_url),
        username=username,
        password=password,
        client_name="caller",
    )
    fast = fail_fast_client(caller)

    assert fast is not caller
    assert fast.acl_whoami() == username
    assert fast.client_getname() == "caller"
    fast.set(f"{key_prefix}:written", "by the copy")
    assert redis_client.get(f"{key_prefix}:written") == b"by the copy"  # same server, same database
    with pytest.raises(redis.exceptions.NoPermissionError):
        fast.set("sttest-outside-the-user-keys", 1)
    fast.close()
    caller.close()


def test_the_copy_drops_the_callers_retries_and_timeouts(proxy: SwitchableProxy, redis_url: str) -> None:
    caller = redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        db=redis_db(redis_url),
        socket_timeout=30,
        socket_connect_timeout=30,
        retry=Retry(NoBackoff(), 5),
        retry_on_error=[redis.exceptions.ResponseError],
    )
    fast = fail_fast_client(caller)
    proxy.switch(up=False)

    with pytest.raises(redis.ConnectionError):
        fast.ping()
    assert proxy.connections == 1  # one attempt, no retry
    with pytest.raises(redis.ConnectionError):
        caller.ping()
    assert proxy.connections == 1 + 6  # the caller's own client is left as it was: 1 + 5 retries

    connection = fast.connection_pool.make_connection()
    assert isinstance(connection, redis.Connection)
    assert (connection.socket_timeout, connection.socket_connect_timeout) == (FAIL_FAST_TIMEOUT_SECONDS,) * 2
    assert connection.retry_on_timeout is False
    assert connection.retry_on_error == []
    fast.close()
    caller.close()


def test_the_copy_keeps_a_unix_socket_and_ssl_settings() -> None:
    unix = fail_fast_client(redis.Redis(unix_socket_path="/run/redis/redis.sock", db=3, password="pw"))
    assert unix.connection_pool.connection_class is redis.UnixDomainSocketConnection
    assert {k: unix.connection_pool.connection_kwargs[k] for k in ("path", "db", "password")} == {
        "path": "/run/redis/redis.sock",
        "db": 3,
        "password": "pw",
    }
    tls = fail_fast_client(
        redis.Redis(host="redis.example", port=6380, ssl=True, ssl_ca_certs="/etc/ca.pem", ssl_cert_reqs="required")
    )
    assert tls.connection_pool.connection_class is redis.SSLConnection
    kwargs = tls.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"]) == (
        "redis.example",
        6380,
        "/etc/ca.pem",
        "required",
    )


def test_the_copy_answers_in_bytes_whatever_the_caller_decodes(redis_url: str, key_prefix: str) -> None:
    fast = fail_fast_client(redis.Redis.from_url(redis_url, decode_responses=True))
    fast.set(f"{key_prefix}:k", "v")
    assert fast.get(f"{key_prefix}:k") == b"v"
    fast.close()


def test_a_fail_fast_client_is_used_as_is(redis_url: str) -> None:
    fast = fail_fast_client(redis.Redis.from_url(redis_url))
    assert fail_fast_client(fast) is fast


def test_the_client_of_an_airflow_redis_connection_is_fail_fast(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, acl_user: tuple[str, str], proxy: SwitchableProxy
) -> None:
    username, password = acl_user
    extra = {"db": redis_db(redis_url)}
    set_connection(
        monkeypatch,
        "st_acl_redis",
        conn_type="redis",
        host="127.0.0.1",
        port=proxy.port,
        login=username,
        password=password,
        extra=extra,
    )
    client = redis_from_connection("st_acl_redis")

    assert client.acl_whoami() == username
    assert fail_fast_client(client) is client  # the breaker and the token cache share it as is
    proxy.switch(up=False)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert proxy.connections == 2  # the one that worked, then one attempt: no retries
    client.close()


def test_a_sentinel_client_is_used_as_given_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caller = Sentinel([("127.0.0.1", 1)]).master_for("mymaster")
    with caplog.at_level(logging.WARNING, logger="airflow_provider_servicetitan.resilience.shared_state"):
        assert fail_fast_client(caller) is caller
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "used as given" in warning


def test_the_timeout_is_validated() -> None:
    with pytest.raises(ValueError, match="timeout"):
        fail_fast_client(redis.Redis(), timeout=0)


# The asyncio copy (for triggers)


def test_the_async_copy_keeps_target_db_and_credentials(
    redis_url: str, redis_client: redis.Redis, key_prefix: str, acl_user: tuple[str, str]
) -> None:
    username, password = acl_user
    caller = redis.Redis(
        host="127.0.0.1",
        port=urlparse(redis_url).port or 6379,
        db=redis_db(redis_url),
        username=username,
        password=password,
        client_name="caller",
        decode_responses=True,
    )

    async def use_the_copy() -> tuple[object, object]:
        fast = fail_fast_async_client(caller)
        try:
            await fast.set(f"{key_prefix}:written", "by the async copy")
            with pytest.raises(redis.exceptions.NoPermissionError):
                await fast.set("sttest-outside-the-user-keys", 1)
            return await fast.acl_whoami(), await fast.get(f"{key_prefix}:written")
        finally:
            await fast.aclose()

    whoami, written = asyncio.run(use_the_copy())
    assert whoami == username
    assert written == b"by the async copy"  # bytes, whatever the caller decodes
    assert redis_client.get(f"{key_prefix}:written") == b"by the async copy"  # same server, same database
    caller.close()


def test_the_async_copy_fails_fast(proxy: SwitchableProxy, redis_url: str) -> None:
    caller = redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        db=redis_db(redis_url),
        socket_timeout=30,
        socket_connect_timeout=30,
        retry=Retry(NoBackoff(), 5),
    )
    fast = fail_fast_async_client(caller)
    proxy.switch(up=False)

    async def ping() -> None:
        try:
            await fast.ping()
        finally:
            await fast.aclose()

    with pytest.raises(redis.ConnectionError):
        asyncio.run(ping())
    assert proxy.connections == 1  # one attempt, no retry
    settings = fast.connection_pool.connection_kwargs
    assert (settings["socket_timeout"], settings["socket_connect_timeout"]) == (FAIL_FAST_TIMEOUT_SECONDS,) * 2
    assert (settings["retry_on_timeout"], settings["retry_on_error"]) == (False, [])
    caller.close()


def test_the_async_copy_keeps_the_tls_settings() -> None:
    tls = {"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required", "ssl_certfile": "/etc/c.pem"}
    fast = fail_fast_async_client(redis.Redis(host="redis.example", port=6380, password="pw", ssl=True, **tls))
    assert fast.connection_pool.connection_class is redis.asyncio.SSLConnection
    settings = fast.connection_pool.connection_kwargs
    assert {name: settings[name] for name in ("host", "port", "password", *tls)} == {
        "host": "redis.example",
        "port": 6380,
        "password": "pw",
        **tls,
    }
    fast.connection_pool.make_connection()  # the asyncio TLS connection takes every setting copied


@pytest.mark.parametrize(
    ("caller", "message"),
    [
        (lambda: redis.Redis(unix_socket_path="/run/redis/redis.sock"), "UnixDomainSocketConnection"),
        (lambda: Sentinel([("127.0.0.1", 1)]).master_for("mymaster"), "SentinelConnectionPool"),
        (lambda: redis.Redis(host="h", ssl=True, ssl_validate_ocsp=True), "ssl_validate_ocsp"),
    ],
    ids=["unix-socket", "sentinel", "ocsp"],
)
def test_what_the_async_copy_cannot_reach_the_same_way_is_refused(
    caller: Callable[[], redis.Redis], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fail_fast_async_client(caller())


# The policy


def test_an_outage_costs_one_attempt_per_recheck_interval_and_one_warning(
    proxy: SwitchableProxy, caller_client: redis.Redis, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    shared_redis = shared(caller_client, clock)
    assert ping(shared_redis) == "redis"
    assert shared_redis.up
    proxy.switch(up=False)

    assert [ping(shared_redis) for _ in range(50)] == ["local"] * 50
    assert proxy.connections == 2  # the one that worked, then one failed attempt
    assert not shared_redis.up
    clock.advance(DEFAULT_REDIS_RECHECK_SECONDS - 0.001)
    assert ping(shared_redis) == "local"
    assert proxy.connections == 2
    clock.advance(0.001)
    assert [ping(shared_redis) for _ in range(10)] == ["local"] * 10
    assert proxy.connections == 3

    [warning] = warnings_of(caplog)
    assert warning.startswith("test cache: Redis unreachable (ConnectionError: ")
    assert "values are kept per process until it answers again (re-checked every 5s)" in warning
    assert infos_of(caplog) == []


def test_redis_answering_again_is_logged_once_and_a_new_outage_warns_again(
    proxy: SwitchableProxy, caller_client: redis.Redis, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    recoveries: list[bool] = []
    shared_redis = shared(caller_client, clock, on_recovery=lambda: recoveries.append(True), recheck_seconds=2)
    proxy.switch(up=False)
    assert ping(shared_redis) == "local"

    proxy.switch(up=True)
    assert ping(shared_redis) == "local"  # not before the re-check interval
    clock.advance(2)
    assert [ping(shared_redis) for _ in range(5)] == ["redis"] * 5
    assert shared_redis.up
    assert recoveries == [True]
    assert infos_of(caplog) == ["test cache: Redis answers again; its state is shared by all workers again"]

    proxy.switch(up=False)
    assert ping(shared_redis) == "local"
    assert len(warnings_of(caplog)) == 2
    assert len(infos_of(caplog)) == 1


def test_during_an_outage_one_thread_rechecks_and_the_others_go_on_locally(
    proxy: SwitchableProxy, caller_client: redis.Redis, clock: FakeClock
) -> None:
    shared_redis = shared(caller_client, clock)
    proxy.switch(up=False)
    assert ping(shared_redis) == "local"
    assert proxy.connections == 1
    clock.advance(DEFAULT_REDIS_RECHECK_SECONDS)

    barrier = threading.Barrier(8)
    answers: list[str] = []

    def worker() -> None:
        barrier.wait()
        answers.append(ping(shared_redis))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == ["local"] * 8
    assert proxy.connections == 2


def test_without_a_client_everything_is_local_and_quiet(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    shared_redis = shared(None, clock)
    assert shared_redis.client is None
    assert not shared_redis.up
    assert [ping(shared_redis) for _ in range(3)] == ["local"] * 3
    assert caplog.records == []


def test_errors_that_are_not_redis_errors_propagate_and_are_no_outage(
    redis_client: redis.Redis, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    shared_redis = shared(redis_client, clock)

    def broken(client: redis.Redis) -> str:
        raise KeyError("a bug in the operation")

    with pytest.raises(KeyError):
        shared_redis.run(broken, lambda: "local")
    assert shared_redis.up
    assert ping(shared_redis) == "redis"
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_the_recheck_interval_is_validated(seconds: float, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="redis_recheck_seconds"):
        shared(None, clock, recheck_seconds=seconds)
