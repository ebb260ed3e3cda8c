"""Redis clients for the provider's shared state, built from an Airflow ``redis`` connection.

The connection is read by the Redis provider's own :class:`RedisHook`, so it means here what it
means to every other Airflow task: ``db``, ``ssl`` and the other ``ssl_*`` settings of the extra,
login and password. Two gaps of that hook are filled: the database of a URI path
(``redis://host:6379/8`` stores ``8`` as the connection's schema, which ``RedisHook`` ignores) is
used when the extra names no ``db``, and a connection without host or port means the local default
Redis, as it always did here. The client is then made to fail fast (see
:func:`~airflow_provider_servicetitan.resilience.shared_state.fail_fast_client`): Redis is shared
memory for coordination (tokens, breakers, alert dedup), so a slow or dead Redis must cost a
fraction of a second, after which callers fall back to per-process state.

Sync code (hooks, operators) calls :func:`redis_from_connection`; async code in the triggerer calls
:func:`async_redis_from_connection`, which reads the connection without blocking the event loop.
Both build their client from the one template of :func:`_template_client`.
"""

from __future__ import annotations

import redis
import redis.asyncio
from airflow.providers.redis.hooks.redis import DEFAULT_REDIS_PORT, RedisHook
from airflow.sdk import BaseHook, Connection

from airflow_provider_servicetitan.resilience.shared_state import fail_fast_async_client, fail_fast_client

__all__ = ["async_redis_from_connection", "redis_from_connection"]

DEFAULT_REDIS_HOST = "127.0.0.1"


def redis_from_connection(conn_id: str) -> redis.Redis:
    """A fail-fast Redis client for the Airflow Redis connection ``conn_id``.

    :raises ValueError: the connection is a Redis Cluster (``{"cluster": true}``): the shared state
        of this provider is kept in one standalone Redis (or behind a proxy that looks like one).
    """
    return fail_fast_client(_template_client(BaseHook.get_connection(conn_id)))


async def async_redis_from_connection(conn_id: str) -> redis.asyncio.Redis:
    """A fail-fast asyncio Redis client for the Airflow Redis connection ``conn_id``, for a trigger.

    The connection is read with :meth:`BaseHook.aget_connection` (in the triggerer, so its secrets
    never travel in a trigger's kwargs) and means what it means to :func:`redis_from_connection`:
    same server, database, credentials and TLS settings, same timeouts, no retries. Replies are bytes.

    :raises ValueError: as :func:`redis_from_connection`.
    """
    return fail_fast_async_client(_template_client(await BaseHook.aget_connection(conn_id)))


class _RedisHookOn(RedisHook):
    """The Redis provider's hook on a connection already read (sync or async): it reads no other."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(redis_conn_id=conn.conn_id)
        self._conn = conn

    def get_connection(self, conn_id: str) -> Connection:  # type: ignore[override]  # per instance, not class
        return self._conn


def _template_client(conn: Connection) -> redis.Redis:
    """The client ``RedisHook`` builds for ``conn``, with the gaps filled: a template the fail-fast
    clients copy their target from. Nothing connects."""
    if conn.extra_dejson.get("cluster"):
        raise ValueError(
            f"Redis connection {conn.conn_id!r} is a Redis Cluster; the provider's shared state needs a standalone "
            'Redis: remove "cluster" from its extra and point it at one Redis (or a proxy)'
        )
    hook = _RedisHookOn(conn)
    client: redis.Redis = hook.get_conn()  # type: ignore[no-untyped-call]  # the Redis provider's hook is not typed
    target = client.connection_pool.connection_kwargs
    schema = (conn.schema or "").strip()
    if hook.db is None and schema.isascii() and schema.isdigit():
        target["db"] = int(schema)
    if not target.get("host"):
        target["host"] = DEFAULT_REDIS_HOST
    if not target.get("port"):
        target["port"] = DEFAULT_REDIS_PORT
    return client
