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
"""

from __future__ import annotations

import redis
from airflow.providers.redis.hooks.redis import DEFAULT_REDIS_PORT, RedisHook

from airflow_provider_servicetitan.resilience.shared_state import fail_fast_client

__all__ = ["redis_from_connection"]

DEFAULT_REDIS_HOST = "127.0.0.1"


def redis_from_connection(conn_id: str) -> redis.Redis:
    """A fail-fast Redis client for the Airflow Redis connection ``conn_id``.

    :raises ValueError: the connection is a Redis Cluster (``{"cluster": true}``): the shared state
        of this provider is kept in one standalone Redis (or behind a proxy that looks like one).
    """
    hook = RedisHook(redis_conn_id=conn_id)
    conn = hook.get_connection(conn_id)
    if conn.extra_dejson.get("cluster"):
        raise ValueError(
            f"Redis connection {conn_id!r} is a Redis Cluster; the provider's shared state needs a standalone "
            'Redis: remove "cluster" from its extra and point it at one Redis (or a proxy)'
        )
    client: redis.Redis = hook.get_conn()  # type: ignore[no-untyped-call]  # the Redis provider's hook is not typed
    # ``client`` is only the template fail_fast_client copies its target from; nothing has connected yet.
    target = client.connection_pool.connection_kwargs
    schema = (conn.schema or "").strip()
    if hook.db is None and schema.isascii() and schema.isdigit():
        target["db"] = int(schema)
    if not target.get("host"):
        target["host"] = DEFAULT_REDIS_HOST
    if not target.get("port"):
        target["port"] = DEFAULT_REDIS_PORT
    return fail_fast_client(client)
