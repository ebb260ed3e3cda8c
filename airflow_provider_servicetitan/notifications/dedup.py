"""One alert per incident across every worker, and an all-clear only where an alert went out.

Each incident key is claimed with one atomic ``SET NX`` in Redis: whichever process claims it first
alerts, the others stay quiet until the window ends. Each credential also has a hash of its open
incidents, so that a "resolved" message goes only to a credential that alerted, exactly once.

Keys are ``<namespace>:alert:<digest>`` and ``<namespace>:alert-open:<digest>``: hashes, never the
incident key or the connection id in clear, and every key has a TTL. If Redis cannot be reached,
one warning is logged and the same rules run on this process's memory until Redis answers again
(tried once per re-check interval): a duplicate alert is better than a missed one.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

import redis

from airflow_provider_servicetitan.resilience.keys import require_key_part
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS, SharedRedis

__all__ = ["AlertDeduplicator"]

logger = logging.getLogger(__name__)

# Take the open incidents of a credential (all, or those of the given kinds), remove them and end
# their alert windows, atomically: of several processes resolving the same credential, exactly one
# gets them, and a recurrence after the close alerts again.
# KEYS[1] = open-incidents hash; ARGV[1] = prefix of the alert keys, ARGV[2..] = kinds (none: all).
# Returns [digest, kind, ...]. (The alert keys are named here, not in KEYS: this shared state is
# kept in one standalone Redis, see hooks.redis.)
_CLOSE_LUA = """
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
local entries = redis.call('HGETALL', KEYS[1])
local closed = {}
for i = 1, #entries, 2 do
  if #ARGV == 1 or wanted[entries[i + 1]] then
    redis.call('HDEL', KEYS[1], entries[i])
    redis.call('DEL', ARGV[1] .. entries[i])
    closed[#closed + 1] = entries[i]
    closed[#closed + 1] = entries[i + 1]
  end
end
return closed
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class AlertDeduplicator:
    """Decides whether an alert is the first of its incident, shared through Redis.

    :param redis_client: a redis-py client (used through a fail-fast copy: short timeouts, no
        retries), or ``None`` to deduplicate within this process only.
    :param namespace: prefix of every Redis key.
    :param window_seconds: an incident alerts at most once per window.
    :param open_incident_ttl_seconds: how long a credential's open incidents are remembered for
        its "resolved" message (at least the window).
    :param redis_recheck_seconds: while Redis is unreachable, how often to try it again.
    :param clock: monotonic seconds, for the windows kept in memory and the re-checks (tests).
    """

    def __init__(
        self,
        redis_client: redis.Redis | None,
        *,
        namespace: str = "servicetitan",
        window_seconds: float = 3600.0,
        open_incident_ttl_seconds: float = 7 * 86400.0,
        redis_recheck_seconds: float = DEFAULT_REDIS_RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        require_key_part(namespace, "namespace")
        if not window_seconds >= 0.001:
            raise ValueError(f"window_seconds must be at least 0.001, got {window_seconds!r}")
        if not open_incident_ttl_seconds >= window_seconds:
            raise ValueError(
                f"open_incident_ttl_seconds ({open_incident_ttl_seconds!r}) must be >= window_seconds "
                f"({window_seconds!r})"
            )
        self._shared = SharedRedis(
            redis_client,
            "alert deduplication",
            degraded="alerts are deduplicated in this process only (other workers may repeat them)",
            recheck_seconds=redis_recheck_seconds,
            clock=clock,
            log=logger,
        )
        self._clock = clock
        self.namespace = namespace
        self.window_seconds = window_seconds
        self.open_incident_ttl_seconds = open_incident_ttl_seconds
        self._lock = threading.Lock()
        self._claimed: dict[str, float] = {}  # digest -> monotonic expiry, while Redis is unusable
        self._open: dict[str, dict[str, str]] = {}  # credential digest -> {incident digest: kind}

    def alert_key(self, incident_key: str) -> str:
        """The Redis key that marks ``incident_key`` as alerted in the current window."""
        return self._alert_key(_digest(incident_key))

    def _alert_key(self, digest: str) -> str:
        return f"{self.namespace}:alert:{digest}"

    def open_key(self, credential: str) -> str:
        """The Redis hash of ``credential``'s open incidents."""
        return f"{self.namespace}:alert-open:{_digest(credential)}"

    def first_in_window(self, incident_key: str, *, credential: str | None = None, kind: str | None = None) -> bool:
        """Claim ``incident_key`` for this window: ``True`` for exactly one caller across all workers.

        With ``credential`` and ``kind``, the incident is also remembered as open for the credential,
        so that :meth:`close_incidents` finds it.
        """
        digest = _digest(incident_key)
        window_ms = max(1, round(self.window_seconds * 1000))

        def on_redis(client: redis.Redis) -> bool:
            with client.pipeline(transaction=True) as pipe:
                pipe.set(self.alert_key(incident_key), 1, nx=True, px=window_ms)
                if credential is not None and kind is not None:
                    pipe.hset(self.open_key(credential), digest, kind)
                    pipe.pexpire(self.open_key(credential), max(1, round(self.open_incident_ttl_seconds * 1000)))
                return bool(pipe.execute()[0])

        def locally() -> bool:
            now = self._clock()
            with self._lock:
                self._claimed = {key: until for key, until in self._claimed.items() if until > now}
                if credential is not None and kind is not None:
                    self._open.setdefault(_digest(credential), {})[digest] = kind
                if digest in self._claimed:
                    return False
                self._claimed[digest] = now + self.window_seconds
                return True

        return self._shared.run(on_redis, locally)

    def forget(self, incident_key: str) -> None:
        """End ``incident_key``'s window now: its next occurrence alerts again."""
        digest = _digest(incident_key)

        def on_redis(client: redis.Redis) -> None:
            client.delete(self.alert_key(incident_key))

        def locally() -> None:
            with self._lock:
                self._claimed.pop(digest, None)

        self._shared.run(on_redis, locally)

    def open_incidents(self, credential: str) -> list[str]:
        """Kinds of ``credential``'s open incidents (those that alerted and were not closed)."""

        def on_redis(client: redis.Redis) -> list[str]:
            return sorted({_text(kind) for kind in client.hvals(self.open_key(credential))})

        def locally() -> list[str]:
            with self._lock:
                return sorted(set(self._open.get(_digest(credential), {}).values()))

        return self._shared.run(on_redis, locally)

    def close_incidents(self, credential: str, kinds: str | Iterable[str] | None = None) -> list[str]:
        """Close ``credential``'s open incidents (of ``kinds``: one kind or several; ``None``: all)
        and end their windows, in one atomic step.

        Returns the kinds closed: empty if there were none, or another process closed them first.
        """
        wanted = None if kinds is None else ({kinds} if isinstance(kinds, str) else set(kinds))
        if wanted is not None and not wanted:
            return []

        def on_redis(client: redis.Redis) -> list[str]:
            close = client.register_script(_CLOSE_LUA)
            flat = close(keys=[self.open_key(credential)], args=[self._alert_key(""), *sorted(wanted or ())])
            return sorted({_text(value) for value in flat[1::2]})

        def locally() -> list[str]:
            with self._lock:
                incidents = self._open.get(_digest(credential), {})
                closed = {digest: found for digest, found in incidents.items() if wanted is None or found in wanted}
                for digest in closed:
                    incidents.pop(digest)
                    self._claimed.pop(digest, None)
                return sorted(set(closed.values()))

        return self._shared.run(on_redis, locally)
