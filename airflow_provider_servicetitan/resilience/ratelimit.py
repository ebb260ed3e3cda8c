"""A rate limiter shared by every worker through Redis: GCRA, one Lua call per decision.

GCRA (the generic cell rate algorithm) keeps one number per limiter, the *theoretical arrival
time* ``tat``. With ``interval = 1 / rate`` and ``tolerance = (burst - 1) * interval``:

* a slot is free at ``now`` when ``tat - tolerance <= now``; otherwise the caller must wait
  ``tat - tolerance - now``;
* taking a slot moves ``tat`` to ``max(tat, now) + interval``.

:meth:`RateLimiter.reserve` takes the next slot at once and says how long to wait before using it
(a reservation: callers queue in the order they asked, one Redis call each, no polling);
:meth:`RateLimiter.acquire` reserves and sleeps. :meth:`RateLimiter.pause` (after a server's 429)
pushes ``tat`` so that no worker gets a slot before the pause ends, and slots come back one per
interval after it, without a burst. The state is one Redis hash (``tat``, ``paused_until``) that
expires once ``tat`` has passed (a fresh limiter then behaves the same), so every key has a TTL.

Time comes from Redis ``TIME`` inside the script (never from a worker's clock), unless a clock is
injected (tests). Without Redis, or while Redis is unreachable, each process applies the same
rules to its own state (:class:`~airflow_provider_servicetitan.resilience.shared_state.SharedRedis`):
then each process limits only itself, so N processes may send up to N times the rate until Redis
answers again.

Safety margin: a server enforcing ``rate_per_second`` with a token bucket (burst = its limit,
continuous refill) sees our requests after network and scheduling delays that can bunch them.
Requests granted at ``rate * (1 - safety_margin)`` with a burst of ``burst`` (default half the
rate) reach such a server without a 429 as long as those delays vary by less than
``(rate - burst) / effective_rate`` seconds (about 0.53 s with the defaults, whatever the rate).

This module does not import Airflow and knows nothing of the service it paces.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Literal

import redis

from airflow_provider_servicetitan.resilience.checks import is_finite_number, require_positive, require_positive_int
from airflow_provider_servicetitan.resilience.keys import require_key_part
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS, SharedRedis

__all__ = [
    "DEFAULT_BURST_FRACTION",
    "DEFAULT_SAFETY_MARGIN",
    "RateLimitWaitTooLong",
    "RateLimiter",
]

logger = logging.getLogger(__name__)

DEFAULT_SAFETY_MARGIN: Final = 0.05
"""Fraction of ``rate_per_second`` left unused, so that our traffic stays under a server enforcing it."""

DEFAULT_BURST_FRACTION: Final = 0.5
"""Default burst, as a fraction of ``rate_per_second`` (at least 1): the rest of the server's burst
absorbs network and scheduling jitter."""

# Seconds a key outlives its theoretical arrival time (it then says nothing a fresh key would not).
_KEY_GRACE_SECONDS: Final = 60

# KEYS[1]: the state hash (tat, paused_until).
# ARGV: command (acquire | pause | peek), now ('' = Redis TIME), interval, tolerance, then
# acquire: max_wait ('' = none); pause: seconds.
# Reply: {granted '1'|'0', wait} as strings (Redis truncates Lua numbers in replies).
RATE_LIMIT_LUA: Final = """
local key = KEYS[1]
local command = ARGV[1]
local interval = tonumber(ARGV[3])
local tolerance = tonumber(ARGV[4])
local now
if ARGV[2] == '' then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
else
  now = tonumber(ARGV[2])
end
local function fmt(x) return string.format('%.17g', x) end
local tat = tonumber(redis.call('HGET', key, 'tat')) or now
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local function save(fields)
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIRE', key, math.ceil((tat - now + __GRACE__) * 1000))
end
if command == 'acquire' then
  if ARGV[5] ~= '' and wait > tonumber(ARGV[5]) then return {'0', fmt(wait)} end
  tat = tat + interval
  save({'tat', fmt(tat)})
  return {'1', fmt(wait)}
elseif command == 'pause' then
  local paused_until = now + tonumber(ARGV[5])
  if tat < paused_until + tolerance then tat = paused_until + tolerance end
  local before = tonumber(redis.call('HGET', key, 'paused_until')) or 0
  if paused_until < before then paused_until = before end
  save({'tat', fmt(tat), 'paused_until', fmt(paused_until)})
  return {'1', fmt(tat - tolerance - now)}
end
return {'1', fmt(wait)}
""".replace("__GRACE__", str(_KEY_GRACE_SECONDS))


class RateLimitWaitTooLong(Exception):
    """:meth:`RateLimiter.reserve` or :meth:`RateLimiter.acquire` would have to wait more than the
    caller's ``max_wait``: no slot was taken. ``retry_after`` is the wait it would have been."""

    def __init__(self, name: str, retry_after: float, max_wait: float) -> None:
        self.name = name
        self.retry_after = retry_after
        self.max_wait = max_wait
        super().__init__(
            f"rate limiter {name!r}: the next slot is {retry_after:.2f}s away, more than the {max_wait:g}s "
            "the caller waits"
        )


class _LocalState:
    """The same rules on this process's state (no Redis, or Redis unreachable)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tat = -math.inf

    def run(self, command: str, interval: float, tolerance: float, arg: float | None) -> tuple[bool, float]:
        with self._lock:
            now = self._clock()
            tat = max(self._tat, now)
            wait = max(tat - tolerance - now, 0.0)
            if command == "acquire":
                if arg is not None and wait > arg:
                    return False, wait
                self._tat = tat + interval
                return True, wait
            if command == "pause":
                assert arg is not None  # noqa: S101 - pause always passes its seconds
                self._tat = max(tat, now + arg + tolerance)
                return True, self._tat - tolerance - now
            return True, wait


class RateLimiter:
    """At most ``rate_per_second`` (less the safety margin) calls per second under ``name``,
    shared through ``redis_client`` by every process using the same name and namespace.

    :param name: what is limited, e.g. ``"api:<tenant>:<hash of the app key>"``; letters, digits
        and ``_ . : / @ -``. It appears in a Redis key: never put a secret in it (hash it).
    :param redis_client: a redis-py client (used through a fail-fast copy: short timeouts, no
        retries), a :class:`SharedRedis` of another component using the same Redis (then both
        share one outage state: one warning, one re-check; ``redis_recheck_seconds`` is its), or
        ``None`` for a per-process limiter.
    :param rate_per_second: the limit the server enforces (> 0).
    :param burst: how many calls may go at once after a quiet period (>= 1). Default:
        ``DEFAULT_BURST_FRACTION`` of the rate, at least 1.
    :param safety_margin: fraction of the rate left unused, in ``[0, 1)``; the limiter grants
        ``rate_per_second * (1 - safety_margin)`` calls per second (:attr:`effective_rate`).
    :param namespace: prefix of the Redis key.
    :param clock: epoch seconds, used instead of Redis ``TIME`` and of the fallback's monotonic
        clock. For tests; production leaves it ``None``.
    :param sleep: how :meth:`acquire` waits (injectable for tests).
    :param redis_recheck_seconds: while Redis is unreachable, how often to try it again.
    """

    def __init__(
        self,
        name: str,
        redis_client: redis.Redis | redis.RedisCluster | SharedRedis[Any] | None,
        *,
        rate_per_second: float,
        burst: int | None = None,
        safety_margin: float = DEFAULT_SAFETY_MARGIN,
        namespace: str = "servicetitan",
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        redis_recheck_seconds: float = DEFAULT_REDIS_RECHECK_SECONDS,
    ) -> None:
        require_key_part(name, "name")
        require_key_part(namespace, "namespace")
        require_positive(rate_per_second, "rate_per_second")
        if not is_finite_number(safety_margin) or not 0 <= safety_margin < 1:
            raise ValueError(f"safety_margin must be a number in [0, 1), got {safety_margin!r}")
        if burst is None:
            burst = max(1, int(rate_per_second * DEFAULT_BURST_FRACTION))
        require_positive_int(burst, "burst")
        if not callable(sleep):
            raise ValueError("sleep must be callable")
        self.name = name
        self.rate_per_second = float(rate_per_second)
        self.safety_margin = float(safety_margin)
        self.effective_rate = self.rate_per_second * (1 - self.safety_margin)
        self.burst = burst
        self.interval = 1.0 / self.effective_rate
        self.tolerance = (burst - 1) * self.interval
        self.key = f"{namespace}:ratelimit:{name}"
        self._clock = clock
        self._sleep = sleep
        # Any: the script runs on a plain client and on a cluster client alike.
        self._shared: SharedRedis[Any] = (
            redis_client
            if isinstance(redis_client, SharedRedis)
            else SharedRedis[Any](
                redis_client,
                f"rate limiter {name!r}",
                degraded="limiting this process alone",
                recheck_seconds=redis_recheck_seconds,
                clock=clock if clock is not None else time.monotonic,
                log=logger,
            )
        )
        client = self._shared.client
        self._script = client.register_script(RATE_LIMIT_LUA) if client is not None else None
        self._local = _LocalState(clock if clock is not None else time.monotonic)

    @property
    def backend(self) -> Literal["redis", "local"]:
        """Where the state lives right now: shared in Redis, or in this process (fallback)."""
        return "redis" if self._shared.up else "local"

    def reserve(self, max_wait: float | None = None) -> float:
        """Take the next slot without waiting; return the seconds to wait before using it (0: now).

        :raises RateLimitWaitTooLong: the wait would be longer than ``max_wait``; no slot was taken.
        """
        if max_wait is not None and (not is_finite_number(max_wait) or max_wait < 0):
            raise ValueError(f"max_wait must be None or a finite number of seconds >= 0, got {max_wait!r}")
        granted, wait = self._run("acquire", max_wait)
        if not granted:
            assert max_wait is not None  # noqa: S101 - only a max_wait refuses a slot
            raise RateLimitWaitTooLong(self.name, wait, max_wait)
        return wait

    def acquire(self, max_wait: float | None = None) -> float:
        """Wait until a slot is free, take it, and return how long that took (seconds slept).

        :raises RateLimitWaitTooLong: the wait would be longer than ``max_wait``; nothing was
            taken and nothing slept (the caller may wait elsewhere, e.g. defer an Airflow task).
        """
        wait = self.reserve(max_wait)
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> float:
        """Give no slot to anybody for ``seconds`` from now (a server answered 429 with this
        ``Retry-After``); slots then come back one per interval. A longer pause already in
        place is kept. Returns the seconds until the next slot."""
        if not is_finite_number(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        # The local state is paused too: if Redis fails now, this process still honours the pause.
        _, wait = self._local.run("pause", self.interval, self.tolerance, float(seconds))
        if self._script is not None:
            wait = self._run("pause", float(seconds))[1]
        return wait

    def peek(self) -> float:
        """Seconds until a slot would be free, taking nothing."""
        return self._run("peek", None)[1]

    def _run(self, command: str, arg: float | None) -> tuple[bool, float]:
        script = self._script
        if script is None:
            return self._local.run(command, self.interval, self.tolerance, arg)

        def on_redis(_client: Any) -> tuple[bool, float]:
            now = repr(float(self._clock())) if self._clock is not None else ""
            args = [command, now, repr(self.interval), repr(self.tolerance), "" if arg is None else repr(arg)]
            reply = script([self.key], args)
            granted, wait = (item.decode() if isinstance(item, bytes) else str(item) for item in reply)
            return granted == "1", float(wait)

        return self._shared.run(on_redis, lambda: self._local.run(command, self.interval, self.tolerance, arg))

    def __repr__(self) -> str:
        return (
            f"RateLimiter(name={self.name!r}, rate={self.effective_rate:g}/s, burst={self.burst}, "
            f"backend={self.backend!r})"
        )
