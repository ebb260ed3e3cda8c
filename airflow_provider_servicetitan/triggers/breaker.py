"""Wait in the triggerer, not in a worker, until a shared circuit breaker admits a probe.

A sync task that finds its breaker open (or is told by ServiceTitan to come back in minutes)
defers with a :class:`BreakerProbeTrigger` and frees its worker slot. The trigger watches the
breaker's keys in Redis, read-only, and fires when the breaker would admit a call: at the end of
the open period, or as soon as a person resets it or requests a probe (noticed within one poll).
The breaker itself, not the trigger, then admits ``half_open_max_calls`` probes across all the
tasks that resume: the event says "try now", never "you hold the probe".

Every decision is made on the Redis clock (``TIME``), as the breaker's: see
:func:`~airflow_provider_servicetitan.resilience.breaker.seconds_until_admission`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_servicetitan.hooks.redis import async_redis_from_connection
from airflow_provider_servicetitan.resilience.breaker import STATE_FIELDS, CircuitBreaker, seconds_until_admission
from airflow_provider_servicetitan.resilience.checks import is_finite_number, require_positive, require_positive_int

__all__ = ["DEFAULT_POLL_INTERVAL", "DEFAULT_REDIS_UNAVAILABLE_TIMEOUT", "BreakerProbeTrigger"]

DEFAULT_POLL_INTERVAL = 5.0
"""Seconds between two looks at the breaker: the longest a reset or a probe request goes unnoticed."""

DEFAULT_REDIS_UNAVAILABLE_TIMEOUT = 300.0
"""Seconds of unreachable Redis after which the trigger gives the task back (``redis_unavailable``)."""


class BreakerProbeTrigger(BaseTrigger):
    """Fires once the breaker whose keys are given would admit a call, and not before ``not_before``.

    Two uses, alone or together:

    * **Open breaker**: ``redis_conn_id``, ``state_key``, ``probes_key`` and
      ``half_open_max_calls`` (:meth:`for_breaker` takes them from a :class:`CircuitBreaker`). Fires
      when the breaker is closed (missing keys, e.g. expired, mean closed), open past its
      ``open_until``, or half-open with a free probe slot, all on the Redis clock.
    * **Long requested wait** (a 429 ``Retry-After``): ``not_before`` alone, in epoch seconds on the
      Airflow hosts' clocks (``time.time()`` of the task plus the wait). No Redis is read.

    With both, it fires when both agree. It sleeps ``min(poll_interval, time left)`` between looks.
    If Redis cannot be reached it tries again every ``poll_interval``; once it has failed for
    ``redis_unavailable_timeout`` seconds in a row, it fires ``redis_unavailable`` so that the
    task resumes on its normal retry policy (the breaker falls back to per-process state there).

    Its kwargs hold a connection id and key names, never a secret: they are stored in the metadata
    DB. The connection is read in the triggerer.

    Events (payloads):

    * ``{"status": "ready", "state": "closed" | "open" | "half_open" | None}``: try now. ``state``
      is the breaker state read (``None`` without a breaker).
    * ``{"status": "redis_unavailable", "error": "<exception class>"}``: give up waiting here.
    """

    def __init__(
        self,
        *,
        redis_conn_id: str | None = None,
        state_key: str | None = None,
        probes_key: str | None = None,
        half_open_max_calls: int = 1,
        not_before: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        redis_unavailable_timeout: float = DEFAULT_REDIS_UNAVAILABLE_TIMEOUT,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's BaseTrigger is not typed
        watches_breaker = redis_conn_id is not None or state_key is not None or probes_key is not None
        if watches_breaker and not (redis_conn_id and state_key and probes_key):
            raise ValueError("watching a breaker takes redis_conn_id, state_key and probes_key together")
        if not watches_breaker and not_before is None:
            raise ValueError("give a breaker to watch (redis_conn_id, state_key, probes_key), not_before, or both")
        if not_before is not None and not is_finite_number(not_before):
            raise ValueError(f"not_before must be epoch seconds or None, got {not_before!r}")
        require_positive_int(half_open_max_calls, "half_open_max_calls")
        require_positive(poll_interval, "poll_interval")
        if not is_finite_number(redis_unavailable_timeout) or redis_unavailable_timeout < 0:
            raise ValueError(
                f"redis_unavailable_timeout must be a finite number of seconds >= 0, got {redis_unavailable_timeout!r}"
            )
        self.redis_conn_id = redis_conn_id
        self.state_key = state_key
        self.probes_key = probes_key
        self.half_open_max_calls = half_open_max_calls
        self.not_before = not_before
        self.poll_interval = poll_interval
        self.redis_unavailable_timeout = redis_unavailable_timeout

    @classmethod
    def for_breaker(
        cls,
        breaker: CircuitBreaker,
        redis_conn_id: str,
        *,
        not_before: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        redis_unavailable_timeout: float = DEFAULT_REDIS_UNAVAILABLE_TIMEOUT,
    ) -> BreakerProbeTrigger:
        """A trigger watching ``breaker``, whose Redis is the Airflow connection ``redis_conn_id``.

        :raises ValueError: ``breaker`` keeps its state per process (it has no Redis client): the
            triggerer could not see it; defer with ``not_before`` alone instead.
        """
        if not breaker.redis_keys:
            raise ValueError(
                f"circuit breaker {breaker.name!r} has no Redis state to watch; defer with not_before instead"
            )
        state_key, _calls, _failures, probes_key = breaker.redis_keys
        return cls(
            redis_conn_id=redis_conn_id,
            state_key=state_key,
            probes_key=probes_key,
            half_open_max_calls=breaker.config.half_open_max_calls,
            not_before=not_before,
            poll_interval=poll_interval,
            redis_unavailable_timeout=redis_unavailable_timeout,
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "redis_conn_id": self.redis_conn_id,
                "state_key": self.state_key,
                "probes_key": self.probes_key,
                "half_open_max_calls": self.half_open_max_calls,
                "not_before": self.not_before,
                "poll_interval": self.poll_interval,
                "redis_unavailable_timeout": self.redis_unavailable_timeout,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Look, sleep ``min(poll_interval, time left)``, look again; yield one event and stop.

        A missing connection is an error (the task fails with it), not an outage.
        """
        client = await async_redis_from_connection(self.redis_conn_id) if self.redis_conn_id else None
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        try:
            while True:
                try:
                    left, state = await self._time_left(client)
                except redis.RedisError as error:
                    now = loop.time()
                    if failing_since is None:
                        failing_since = now
                        self.log.warning(
                            "Redis of connection %r unreachable (%s); trying again every %gs for up to %gs",
                            self.redis_conn_id,
                            type(error).__name__,
                            self.poll_interval,
                            self.redis_unavailable_timeout,
                        )
                    if now - failing_since >= self.redis_unavailable_timeout:
                        yield _event({"status": "redis_unavailable", "error": type(error).__name__})
                        return
                    left = self.poll_interval
                else:
                    failing_since = None
                    if left <= 0:
                        yield _event({"status": "ready", "state": state})
                        return
                    self.log.debug("breaker %s is %s; a call is admitted in %.1fs", self.state_key, state, left)
                await asyncio.sleep(min(self.poll_interval, left))
        finally:
            if client is not None:
                await client.aclose()

    async def _time_left(self, client: redis.asyncio.Redis | None) -> tuple[float, str | None]:
        """Seconds until both conditions hold, and the breaker's state (``None`` without one)."""
        left = 0.0 if self.not_before is None else self.not_before - time.time()
        if client is None or self.state_key is None or self.probes_key is None:
            return left, None
        pipe = client.pipeline(transaction=True)  # one snapshot: the clock and both keys together
        pipe.time()
        pipe.hmget(self.state_key, list(STATE_FIELDS))
        pipe.zrange(self.probes_key, 0, -1, withscores=True)
        (seconds, microseconds), values, leases = await pipe.execute()
        fields = {name: value.decode() for name, value in zip(STATE_FIELDS, values, strict=True) if value is not None}
        breaker_left = seconds_until_admission(
            fields,
            (score for _member, score in leases),
            now=seconds + microseconds / 1_000_000,
            half_open_max_calls=self.half_open_max_calls,
        )
        return max(left, breaker_left), fields.get("state", "closed")


def _event(payload: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]  # Airflow's TriggerEvent is not typed
