"""A circuit breaker shared by every worker through Redis.

Closed, the breaker lets calls through and counts their outcomes in a rolling window. Too many
failures (a count, or a rate once enough calls were seen) open it: calls are refused at once with
:class:`~airflow_provider_servicetitan.errors.CircuitBreakerOpenError` and the service is left
alone. After the open period it half-opens and admits a few probes across all workers; a probe
success closes it, a probe failure opens it again for longer (exponential, capped).

Shared through Redis, a breaker costs about one round trip per
:attr:`~BreakerConfig.success_batch_size` successful calls in the closed state (or per
:attr:`~BreakerConfig.closed_cache_seconds`), and one per failed call: a process admits closed-state
calls from the state its last round trip returned and buffers successes while the window holds no
failure. The staleness bound: a process trusts a closed state for ``closed_cache_seconds``
(default 1 s) from the moment it sent the round trip that returned it, a round trip the breaker
answered before it opened; so once the breaker opens, every process stops admitting calls within
``closed_cache_seconds``, and at its first failure or flushed batch if that comes sooner. Failures
are recorded at once; half-open (probe) admission is always one atomic decision in Redis. See
:mod:`.redis_backend` for the details.

The breaker knows nothing of the service it protects: which errors are failures is decided by the
``classify`` function its creator passes (by default every exception is one).

Modules: :mod:`.config` (rules, states, transitions, outcomes), :mod:`.redis_backend` (the
shared state machine, one Lua script in ``breaker.lua`` timed by the Redis clock; tests may inject
a clock instead), :mod:`.local` (its per-process copy), :mod:`.admission` (when a breaker will admit
a call, read from its keys by a watcher such as an Airflow trigger) and this facade. If Redis cannot be reached
the breaker keeps working on the per-process state machine with the same rules, tries Redis again
once per ``redis_recheck_seconds``, and goes back to it when it answers
(:class:`~airflow_provider_servicetitan.resilience.shared_state.SharedRedis`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import redis

from airflow_provider_servicetitan.errors import CircuitBreakerOpenError
from airflow_provider_servicetitan.resilience.breaker.admission import STATE_FIELDS, seconds_until_admission
from airflow_provider_servicetitan.resilience.breaker.config import (
    Backend,
    BreakerConfig,
    BreakerListener,
    BreakerState,
    BreakerTransition,
    CallOutcome,
    Classifier,
    Reply,
    count_every_error,
)
from airflow_provider_servicetitan.resilience.breaker.local import LocalBackend
from airflow_provider_servicetitan.resilience.breaker.redis_backend import RedisBackend
from airflow_provider_servicetitan.resilience.checks import require_positive
from airflow_provider_servicetitan.resilience.keys import require_key_part
from airflow_provider_servicetitan.resilience.shared_state import SharedRedis

__all__ = [
    "STATE_FIELDS",
    "BreakerConfig",
    "BreakerListener",
    "BreakerPermit",
    "BreakerState",
    "BreakerTransition",
    "CallOutcome",
    "CircuitBreaker",
    "Classifier",
    "count_every_error",
    "seconds_until_admission",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BreakerPermit:
    """Admission of one call by :meth:`CircuitBreaker.acquire`. Settle it exactly once with
    :meth:`success`, :meth:`error` or :meth:`release`; :meth:`CircuitBreaker.call` does it for you.

    The permit remembers the generation (and, for a probe, the lease) it was admitted under: an
    outcome reported after the breaker changed state is dropped.
    """

    __slots__ = ("_backend", "_breaker", "_settled", "generation", "probe_id")

    def __init__(self, breaker: CircuitBreaker, backend: Backend, generation: int, probe_id: str) -> None:
        self._breaker = breaker
        self._backend = backend
        self._settled = False
        self.generation = generation
        self.probe_id: str | None = probe_id or None

    @property
    def is_probe(self) -> bool:
        return self.probe_id is not None

    def success(self) -> None:
        """The call succeeded."""
        self._settle(CallOutcome.SUCCESS)

    def error(self, error: BaseException) -> None:
        """The call raised ``error``; the breaker's ``classify`` decides whether it is a failure,
        ignored or a success (the service answered, e.g. a 404)."""
        self._settle(self._breaker.classify(error))

    def release(self) -> None:
        """The call was abandoned (cancelled, interrupted): count nothing, free the probe lease."""
        self._settle(CallOutcome.IGNORED)

    def _settle(self, outcome: CallOutcome) -> None:
        if self._settled:
            raise RuntimeError("this breaker permit was already settled")
        self._settled = True
        self._breaker._record(self._backend, self.generation, self.probe_id or "", outcome)


class CircuitBreaker:
    """A circuit breaker named ``name``, shared through ``redis_client`` by every process that
    uses the same name and namespace.

    :param name: identifies the protected dependency (e.g. ``"servicetitan-api"``); letters,
        digits and ``_ . : / @ -``. It appears in Redis keys: never put a secret in it.
    :param redis_client: a redis-py client, or ``None`` for a per-process breaker. The breaker
        talks to the same Redis through a fail-fast copy of it (short timeouts, no retries, see
        :func:`~airflow_provider_servicetitan.resilience.shared_state.fail_fast_client`).
    :param config: the rules, see :class:`BreakerConfig`.
    :param namespace: prefix of every Redis key.
    :param listeners: called with each :class:`BreakerTransition` this process performs.
    :param classify: how a call that raised counts (see :class:`CallOutcome`); the protected
        service's client knows which of its errors say the service is failing. The default,
        :func:`count_every_error`, counts every exception as a failure.
    :param clock: returns the current time in epoch seconds, used instead of Redis ``TIME`` and of
        the monotonic clock of the fallback and of the closed-state cache. For tests; production
        leaves it ``None``: the shared state runs on the Redis server's clock, never on a worker's.
    """

    def __init__(
        self,
        name: str,
        redis_client: redis.Redis | redis.RedisCluster | None,
        config: BreakerConfig | None = None,
        *,
        namespace: str = "servicetitan",
        listeners: Iterable[BreakerListener] = (),
        clock: Callable[[], float] | None = None,
        classify: Classifier = count_every_error,
    ) -> None:
        require_key_part(name, "name")
        require_key_part(namespace, "namespace")
        if not callable(classify):
            raise ValueError("classify must be callable")
        self.name = name
        self.classify = classify
        self.config = config if config is not None else BreakerConfig()
        self._clock = clock
        self._listeners: list[BreakerListener] = list(listeners)
        # Any: the breaker's Lua script runs on a plain client and on a cluster client alike.
        self._shared = SharedRedis[Any](
            redis_client,
            f"circuit breaker {name!r}",
            degraded="using a per-process breaker",
            recheck_seconds=self.config.redis_recheck_seconds,
            clock=clock if clock is not None else time.monotonic,
            log=logger,
            on_recovery=self._start_local_afresh,
        )
        shared_client = self._shared.client
        self._redis = (
            RedisBackend(shared_client, name, namespace, self.config, clock) if shared_client is not None else None
        )
        self._local = LocalBackend(name, self.config, clock)

    @property
    def backend(self) -> Literal["redis", "local"]:
        """Where the state lives right now: shared in Redis, or in this process (fallback)."""
        return "redis" if self._shared.up else "local"

    @property
    def redis_keys(self) -> tuple[str, ...]:
        """The Redis keys of this breaker (empty without a Redis client), in this order: state
        hash, calls, failures, probe leases (see :mod:`.redis_backend`)."""
        return self._redis.keys if self._redis is not None else ()

    @property
    def state(self) -> BreakerState:
        """Current state. Reading it applies a due open -> half_open transition."""
        return self._execute(lambda backend: backend.peek()).state

    def add_listener(self, listener: BreakerListener) -> None:
        """Call ``listener`` with every transition this process performs. Its exceptions are
        logged and never reach the caller."""
        self._listeners.append(listener)

    def acquire(self) -> BreakerPermit:
        """Ask to make one call. Raises :class:`CircuitBreakerOpenError` if refused."""
        reply, backend = self._execute_on(lambda backend: backend.acquire())
        if not reply.admitted:
            raise CircuitBreakerOpenError(self.name, reply.retry_after)
        return BreakerPermit(self, backend, reply.generation, reply.probe_id)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` if the breaker admits it, and record the outcome.

        Raises :class:`CircuitBreakerOpenError` without calling ``fn`` when refused; otherwise
        returns what ``fn`` returns or re-raises what it raises.
        """
        permit = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except Exception as error:
            permit.error(error)
            raise
        except BaseException:
            permit.release()
            raise
        permit.success()
        return result

    def flush(self) -> None:
        """Write the successes this process buffered to Redis now (they are otherwise written with
        the next round trip, within ``closed_cache_seconds`` of the calls that follow). Nothing to do
        on the per-process breaker."""
        shared = self._redis
        if shared is None or not self._shared.up:
            return
        reply = self._shared.run(lambda _client: shared.flush(), lambda: None)
        if reply is not None:
            self._notify(reply.transitions)

    def force_open(self, seconds: float) -> None:
        """Open the breaker for ``seconds`` from now, whatever its state (an operator's action)."""
        require_positive(seconds, "seconds")
        self._execute(lambda backend: backend.force_open(seconds))

    def reset(self) -> None:
        """Close the breaker and forget its failures and re-open count."""
        self._execute(lambda backend: backend.reset())

    def request_probe(self) -> BreakerState:
        """Try the service now: a person cleared the task that waits for this breaker.

        An open breaker half-opens at once (reason ``probe_requested``, reported to listeners like
        any transition), without waiting for the end of its open period: the usual probe admission
        then lets ``half_open_max_calls`` probes through across all workers, and a failed probe
        re-opens it with the usual backoff (the re-open count is kept, unlike :meth:`reset`). A
        closed or half-open breaker is left as it is. Returns the state after the request.
        """
        return self._execute(lambda backend: backend.request_probe()).state

    def _execute(self, step: Callable[[Backend], Reply]) -> Reply:
        return self._execute_on(step)[0]

    def _execute_on(self, step: Callable[[Backend], Reply]) -> tuple[Reply, Backend]:
        """Run ``step`` on Redis if it is (or may again be) reachable, else on the local state."""
        shared = self._redis
        if shared is not None:
            reply = self._try_redis(lambda: step(shared))
            if reply is not None:
                return reply, shared
        local = self._local
        reply = step(local)
        self._notify(reply.transitions)
        return reply, local

    def _record(self, backend: Backend, generation: int, probe_id: str, outcome: CallOutcome) -> None:
        if backend is self._local:
            self._notify(backend.record(generation, probe_id, outcome).transitions)
        elif backend is self._redis and self._shared.up:
            self._try_redis(lambda: backend.record(generation, probe_id, outcome))
        # Otherwise the call was admitted by the other backend: its generation means nothing here.

    def _try_redis(self, step: Callable[[], Reply]) -> Reply | None:
        """Run a Redis ``step`` and report its transitions; ``None`` if Redis was not used (an
        outage: see :class:`SharedRedis`)."""
        reply = self._shared.run(lambda _client: step(), lambda: None)
        if reply is not None:
            self._notify(reply.transitions)
        return reply

    def _start_local_afresh(self) -> None:
        """Redis answers again: the next outage starts from a clean local state, not this one's."""
        self._local = LocalBackend(self.name, self.config, self._clock)

    def _notify(self, transitions: Iterable[BreakerTransition]) -> None:
        for transition in transitions:
            logger.info(
                "circuit breaker %r: %s -> %s (%s)",
                self.name,
                transition.from_state.value,
                transition.to_state.value,
                transition.reason,
            )
            for listener in list(self._listeners):
                try:
                    listener(transition)
                except Exception:
                    logger.exception("circuit breaker %r: listener %r failed", self.name, listener)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, backend={self.backend!r})"
