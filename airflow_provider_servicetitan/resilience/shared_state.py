"""Redis, else per-process state until Redis answers again: one policy for every user of Redis.

The circuit breaker, the token cache and alert deduplication keep their state in Redis so that
every worker sees the same state. Redis trouble must degrade that coordination, never stall a
sync. So each of them talks to Redis through :class:`SharedRedis`, which

* uses its own fail-fast client for the caller's Redis (:func:`fail_fast_client`): short socket
  timeouts and no redis-py retries, whatever client the caller built (redis-py 6+ retries 10 times
  with backoff by default, seconds per command when Redis is down);
* on a Redis error logs one warning per outage and tells its user to use per-process state;
* does not try Redis again until ``recheck_seconds`` have passed (one try per interval across the
  threads of a process), and logs once at INFO when Redis answers again.

Async code (an Airflow trigger watching a breaker) gets the same fail-fast client for asyncio from
:func:`fail_fast_async_client`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from airflow_provider_servicetitan.resilience.checks import require_positive

__all__ = [
    "DEFAULT_REDIS_RECHECK_SECONDS",
    "FAIL_FAST_TIMEOUT_SECONDS",
    "SharedRedis",
    "fail_fast_async_client",
    "fail_fast_client",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Client = TypeVar("Client", redis.Redis, redis.RedisCluster)

DEFAULT_REDIS_RECHECK_SECONDS = 5.0
"""While Redis is unreachable, how often its users try it again (seconds)."""

FAIL_FAST_TIMEOUT_SECONDS = 0.5
"""Connect and read timeout of the clients built by :func:`fail_fast_client` (seconds)."""

# Pool types whose connections are fully described by connection_class + connection_kwargs. Other
# pools (Sentinel) find their server through more clients, which cannot be copied this way.
_COPYABLE_POOLS = (redis.ConnectionPool, redis.BlockingConnectionPool)
# Per-pool state that a pool adds to its own connection_kwargs (redis-py 6+): never shared.
_POOL_OWNED_KWARGS = (
    "himport_registry",
    "maint_notifications_pool_handler",
    "oss_cluster_maint_notifications_handler",
    "orig_host_address",
    "orig_socket_timeout",
    "orig_socket_connect_timeout",
)
_fail_fast_clients: weakref.WeakSet[redis.Redis] = weakref.WeakSet()
# What an asyncio copy takes from a sync pool's connection_kwargs: the server and how to reach it
# securely. The rest (timeouts, retries, pool-owned state) is the copy's own.
_ASYNC_TARGET_KWARGS = frozenset(
    {
        "host",
        "port",
        "db",
        "username",
        "password",
        "credential_provider",
        "client_name",
        "protocol",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_include_verify_flags",
        "ssl_exclude_verify_flags",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
        "ssl_password",
    }
)
# TLS checks of sync clients that redis-py's asyncio connections cannot make: refused, never dropped.
_SYNC_ONLY_TLS_KWARGS = ("ssl_validate_ocsp", "ssl_validate_ocsp_stapled", "ssl_ocsp_context", "ssl_ocsp_expected_cert")
_ASYNC_CONNECTION_CLASSES: dict[
    type[redis.connection.AbstractConnection], type[redis.asyncio.connection.AbstractConnection]
] = {
    redis.Connection: redis.asyncio.Connection,
    redis.SSLConnection: redis.asyncio.SSLConnection,
}


def fail_fast_client(client: Client, *, timeout: float = FAIL_FAST_TIMEOUT_SECONDS) -> Client:
    """A client for the same Redis as ``client`` that fails fast: ``timeout`` to connect and to
    read, no retries of any kind, replies as bytes.

    The target (host, port or unix socket, db, username, password or credential provider, SSL
    settings, client name) is copied from ``client``'s connection pool; ``client`` itself is left
    untouched. A client built here is returned as is. A Redis Cluster or Sentinel client cannot be
    rebuilt from its pool: it is returned unchanged (a warning says so); build those with short
    timeouts and no retries yourself.
    """
    require_positive(timeout, "timeout")
    if not isinstance(client, redis.Redis):
        _warn_not_converted(client)
        return client
    if client in _fail_fast_clients:
        return client
    pool = client.connection_pool
    if type(pool) not in _COPYABLE_POOLS:
        _warn_not_converted(client)
        return client
    kwargs = {name: value for name, value in pool.connection_kwargs.items() if name not in _POOL_OWNED_KWARGS}
    kwargs.update(_failing_fast(timeout, Retry(NoBackoff(), 0)))
    fast = redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class, max_connections=pool.max_connections, **kwargs
        )
    )
    fast.auto_close_connection_pool = True  # the pool is ours: closing the client closes it
    _fail_fast_clients.add(fast)
    return fast


def fail_fast_async_client(client: redis.Redis, *, timeout: float = FAIL_FAST_TIMEOUT_SECONDS) -> redis.asyncio.Redis:
    """An asyncio client for the same Redis as the sync ``client``, failing as fast as
    :func:`fail_fast_client`'s: ``timeout`` to connect and to read, no retries, replies as bytes.

    The same target is copied (host, port, db, username, password or credential provider, client
    name, TLS settings), so sync and async code built from one ``client`` always
    reach the same server the same way; ``client`` is left untouched and nothing connects yet.
    Closing the returned client (``await client.aclose()``) closes its own pool.

    :raises ValueError: ``client`` cannot be copied: a Sentinel or custom pool, a connection class
        other than TCP or TLS (a unix socket), or a TLS check asyncio connections cannot make (OCSP).
    """
    require_positive(timeout, "timeout")
    pool = client.connection_pool
    connection_class = _ASYNC_CONNECTION_CLASSES.get(pool.connection_class)
    if type(pool) not in _COPYABLE_POOLS or connection_class is None:
        raise ValueError(
            f"a Redis client with a {type(pool).__name__} of {pool.connection_class.__name__} cannot be copied to "
            "an asyncio client; give a client for one standalone Redis over TCP or TLS"
        )
    settings = pool.connection_kwargs
    unsupported = [name for name in _SYNC_ONLY_TLS_KWARGS if settings.get(name)]
    if unsupported:
        raise ValueError(f"redis-py's asyncio client cannot make the TLS checks {', '.join(unsupported)}")
    async_pool = redis.asyncio.ConnectionPool(
        connection_class=connection_class,
        max_connections=pool.max_connections,
        **{name: value for name, value in settings.items() if name in _ASYNC_TARGET_KWARGS},
        **_failing_fast(timeout, AsyncRetry(NoBackoff(), 0)),
    )
    return redis.asyncio.Redis.from_pool(async_pool)


def _failing_fast(timeout: float, retry: Retry | AsyncRetry) -> dict[str, Any]:
    """Connection settings of a fail-fast client: ``timeout`` to connect and read, no retry, bytes."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": retry,
        "retry_on_timeout": False,
        "retry_on_error": [],
        "decode_responses": False,
    }


def _warn_not_converted(client: object) -> None:
    logger.warning(
        "%s cannot be rebuilt to fail fast; it is used as given, so give it short socket timeouts and no "
        "retries or a Redis outage costs its retries at every try",
        type(client).__name__,
    )


class SharedRedis(Generic[Client]):
    """The Redis one component keeps its shared state in, and what to do when Redis fails.

    :param client: the caller's client (turned into a fail-fast one), or ``None`` for
        per-process state only (then :meth:`run` always runs ``locally``, silently).
    :param user: who uses Redis, for the logs, e.g. ``"token cache"``.
    :param degraded: what the user does without Redis, for the warning, e.g. ``"tokens are
        cached per process"``.
    :param recheck_seconds: after a Redis error, how long to use per-process state before trying
        Redis again.
    :param clock: monotonic seconds (injectable for tests).
    :param log: the logger of the user, so that its messages carry its name.
    :param on_recovery: called once when Redis answers again after an outage (before the INFO
        message), under the internal lock: keep it short and do not call back into this object.
    """

    def __init__(
        self,
        client: Client | None,
        user: str,
        *,
        degraded: str,
        recheck_seconds: float = DEFAULT_REDIS_RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger = logger,
        on_recovery: Callable[[], None] | None = None,
    ) -> None:
        require_positive(recheck_seconds, "redis_recheck_seconds")
        self.client: Client | None = fail_fast_client(client) if client is not None else None
        self.user = user
        self.degraded = degraded
        self.recheck_seconds = recheck_seconds
        self._clock = clock
        self._log = log
        self._on_recovery = on_recovery
        self._lock = threading.Lock()
        self._up = self.client is not None
        self._retry_at = 0.0

    @property
    def up(self) -> bool:
        """Whether the state lives in Redis right now: a client was given and no outage is on."""
        return self._up

    def run(self, on_redis: Callable[[Client], T], locally: Callable[[], T]) -> T:
        """``on_redis(client)`` if Redis may be used now and answers, else ``locally()``.

        During an outage Redis is tried again once per ``recheck_seconds`` (by one thread; the
        others go on locally meanwhile). Only :class:`redis.RedisError` means "Redis failed";
        any other exception of ``on_redis`` propagates.
        """
        client = self.client
        if client is None:
            return locally()
        recheck = not self._up
        if recheck and not self._claim_recheck():
            return locally()
        try:
            result = on_redis(client)
        except redis.RedisError as error:
            self._failed(error)
            return locally()
        if recheck:
            self._recovered()
        return result

    def _claim_recheck(self) -> bool:
        """During an outage, whether the calling thread may try Redis now (then no other may until
        the next interval)."""
        with self._lock:
            if self._up:
                return True
            now = self._clock()
            if now < self._retry_at:
                return False
            self._retry_at = now + self.recheck_seconds
            return True

    def _failed(self, error: redis.RedisError) -> None:
        with self._lock:
            self._retry_at = self._clock() + self.recheck_seconds
            first = self._up
            self._up = False
        if not first:
            self._log.debug("%s: Redis still unreachable (%s)", self.user, type(error).__name__)
            return
        self._log.warning(
            "%s: Redis unreachable (%s: %s); %s until it answers again (re-checked every %gs)",
            self.user,
            type(error).__name__,
            error,
            self.degraded,
            self.recheck_seconds,
        )

    def _recovered(self) -> None:
        with self._lock:
            if self._up:
                return
            self._up = True
            if self._on_recovery is not None:
                self._on_recovery()
        self._log.info("%s: Redis answers again; its state is shared by all workers again", self.user)
