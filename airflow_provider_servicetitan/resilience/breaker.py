"""A circuit breaker shared by every worker through Redis.

Closed, the breaker lets calls through and counts their outcomes in a rolling window. Too many
failures (a count, or a rate once enough calls were seen) open it: calls are refused at once with
:class:`~airflow_provider_servicetitan.errors.CircuitBreakerOpenError` and the service is left
alone. After the open period it half-opens and admits a few probes across all workers; a probe
success closes it, a probe failure opens it again for longer (exponential, capped).

Every read-decide-write of the shared state is one Lua script (see :mod:`.breaker_scripts`),
timed by the Redis clock (tests may inject a clock instead). If Redis cannot be reached the
breaker keeps working on a per-process state machine with the same rules, tries Redis again once
per ``redis_recheck_seconds``, and goes back to it when it answers
(:class:`~.shared_state.SharedRedis`).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, TypeVar

import redis
import requests

from airflow_provider_servicetitan.errors import (
    CircuitBreakerOpenError,
    RateLimitExceededError,
    RetryExhaustedError,
    ServiceTitanConnectionError,
    ServiceTitanServerError,
    ServiceTitanTimeoutError,
    error_from_exception,
)
from airflow_provider_servicetitan.resilience.breaker_scripts import (
    BREAKER_LUA,
    CONFIG_FIELDS,
    REPLY_HEAD,
    TRANSITION_FIELDS,
)
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS, SharedRedis

__all__ = [
    "BreakerConfig",
    "BreakerListener",
    "BreakerPermit",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "default_ignore",
    "default_record_failure",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:/@-]{1,200}")


class BreakerState(StrEnum):
    """State of a breaker. Compares equal to its string value (``"closed"`` etc.)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _root_error(error: BaseException) -> BaseException:
    """The error a retry gave up on: a breaker around a retry judges the last attempt."""
    while isinstance(error, RetryExhaustedError):
        error = error.last_error
    return error


def default_record_failure(error: BaseException) -> bool:
    """Whether ``error`` says the service is failing: 5xx (maintenance included), timeouts and
    broken connections. Client errors (4xx), rejected credentials and rate limiting are not."""
    error = _root_error(error)
    if isinstance(error, requests.RequestException):
        error = error_from_exception(error)
    return isinstance(error, ServiceTitanServerError | ServiceTitanTimeoutError | ServiceTitanConnectionError)


def default_ignore(error: BaseException) -> bool:
    """Errors that say nothing about the service's health: rate limiting and another breaker's
    refusal. Ignored outcomes count as neither success nor failure."""
    return isinstance(_root_error(error), RateLimitExceededError | CircuitBreakerOpenError)


def _positive(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class BreakerConfig:
    """Rules of a breaker. Every process sharing a breaker name must use the same config.

    :param failure_threshold: open after this many failures inside the window.
    :param window_seconds: length of the rolling window of outcomes.
    :param failure_rate_threshold: also open when failures / calls reaches this (0 < x <= 1)...
    :param minimum_calls: ...once at least this many calls are in the window.
    :param open_seconds: first open period.
    :param max_open_seconds: cap of the open period after repeated probe failures.
    :param open_backoff_multiplier: the k-th consecutive re-open lasts
        ``open_seconds * multiplier**k`` (capped); closing resets k.
    :param half_open_max_calls: probes admitted at a time across all processes.
    :param probe_lease_seconds: a probe's admission expires after this long, so a worker killed
        mid-probe cannot keep the breaker half-open forever.
    :param key_ttl_seconds: garbage-collection TTL of the Redis keys; must exceed the windows.
    :param redis_recheck_seconds: while Redis is unreachable, how often to try it again.
    :param record_failure: which errors count as failures.
    :param ignore: which errors count as nothing (checked first). Any other error counts as a
        success: the service answered.
    """

    failure_threshold: int = 5
    window_seconds: float = 60.0
    failure_rate_threshold: float = 0.5
    minimum_calls: int = 10
    open_seconds: float = 30.0
    max_open_seconds: float = 600.0
    open_backoff_multiplier: float = 2.0
    half_open_max_calls: int = 1
    probe_lease_seconds: float = 30.0
    key_ttl_seconds: float = 86400.0
    redis_recheck_seconds: float = DEFAULT_REDIS_RECHECK_SECONDS
    record_failure: Callable[[BaseException], bool] = field(default=default_record_failure, repr=False)
    ignore: Callable[[BaseException], bool] = field(default=default_ignore, repr=False)

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "minimum_calls", "half_open_max_calls"):
            _positive_int(getattr(self, name), name)
        for name in (
            "window_seconds",
            "failure_rate_threshold",
            "open_seconds",
            "max_open_seconds",
            "open_backoff_multiplier",
            "probe_lease_seconds",
            "key_ttl_seconds",
            "redis_recheck_seconds",
        ):
            _positive(getattr(self, name), name)
        if self.failure_rate_threshold > 1:
            raise ValueError(f"failure_rate_threshold must be <= 1, got {self.failure_rate_threshold!r}")
        if self.max_open_seconds < self.open_seconds:
            raise ValueError(
                f"max_open_seconds ({self.max_open_seconds!r}) must be >= open_seconds ({self.open_seconds!r})"
            )
        if self.open_backoff_multiplier < 1:
            raise ValueError(f"open_backoff_multiplier must be >= 1, got {self.open_backoff_multiplier!r}")
        longest = max(self.window_seconds, self.max_open_seconds, self.probe_lease_seconds)
        if self.key_ttl_seconds <= longest:
            raise ValueError(
                f"key_ttl_seconds ({self.key_ttl_seconds!r}) must exceed window_seconds, max_open_seconds "
                f"and probe_lease_seconds ({longest!r})"
            )
        for name in ("record_failure", "ignore"):
            if not callable(getattr(self, name)):
                raise ValueError(f"{name} must be callable")

    def open_duration(self, reopens: int) -> float:
        """Length of the open period after ``reopens`` consecutive re-opens."""
        try:
            duration = self.open_seconds * self.open_backoff_multiplier**reopens
        except OverflowError:
            return self.max_open_seconds
        return min(self.max_open_seconds, duration)


@dataclass(frozen=True)
class BreakerTransition:
    """One state change, reported once across all processes (to the process that performed it).

    ``at`` and ``open_until`` are epoch seconds (Redis time on the Redis backend, the injected
    clock's time if the breaker was given one); ``open_until`` is set only when ``to_state`` is
    open. ``reason`` is one of ``failure_threshold``, ``failure_rate``, ``open_timeout``,
    ``probe_succeeded``, ``probe_failed``, ``forced_open``, ``reset``. ``from_state`` equals
    ``to_state`` when an open breaker is forced open again.
    """

    name: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at: float
    open_until: float | None


BreakerListener = Callable[[BreakerTransition], None]


class _Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


@dataclass(frozen=True)
class _Reply:
    """What one atomic step of a backend decided."""

    state: BreakerState
    generation: int
    admitted: bool
    probe_id: str
    retry_after: float
    transitions: tuple[BreakerTransition, ...]


class _Backend(Protocol):
    def acquire(self) -> _Reply: ...

    def record(self, generation: int, probe_id: str, outcome: _Outcome) -> _Reply: ...

    def peek(self) -> _Reply: ...

    def force_open(self, seconds: float) -> _Reply: ...

    def reset(self) -> _Reply: ...


class _RedisBackend:
    """The shared state machine: every method is one call of the Lua script, timed by Redis
    ``TIME`` unless a ``clock`` is given (its time is then passed to the script)."""

    def __init__(
        self, client: Any, name: str, namespace: str, config: BreakerConfig, clock: Callable[[], float] | None
    ) -> None:
        self._name = name
        self._clock = clock
        self._script = client.register_script(BREAKER_LUA)
        base = f"{namespace}:breaker:{{{name}}}"
        self.keys = (f"{base}:state", f"{base}:calls", f"{base}:failures", f"{base}:probes")
        self._config_args = [repr(getattr(config, name)) for name in CONFIG_FIELDS]

    def _run(self, command: str, *extra: str) -> _Reply:
        now = repr(float(self._clock())) if self._clock is not None else ""
        raw = self._script(keys=list(self.keys), args=[command, now, *self._config_args, *extra])
        fields = [item.decode() if isinstance(item, bytes) else str(item) for item in raw]
        head, tail = fields[:REPLY_HEAD], fields[REPLY_HEAD:]
        transitions = tuple(
            BreakerTransition(
                name=self._name,
                from_state=BreakerState(tail[i]),
                to_state=BreakerState(tail[i + 1]),
                reason=tail[i + 2],
                at=float(tail[i + 3]),
                open_until=float(tail[i + 4]) if tail[i + 4] else None,
            )
            for i in range(0, len(tail), TRANSITION_FIELDS)
        )
        return _Reply(
            state=BreakerState(head[0]),
            generation=int(head[1]),
            admitted=head[2] == "1",
            probe_id=head[3],
            retry_after=float(head[4]),
            transitions=transitions,
        )

    def acquire(self) -> _Reply:
        return self._run("acquire")

    def record(self, generation: int, probe_id: str, outcome: _Outcome) -> _Reply:
        return self._run("record", str(generation), probe_id, outcome.value)

    def peek(self) -> _Reply:
        return self._run("peek")

    def force_open(self, seconds: float) -> _Reply:
        return self._run("force_open", repr(float(seconds)))

    def reset(self) -> _Reply:
        return self._run("reset")


class _LocalBackend:
    """The same state machine as the Lua script, for one process, on the monotonic clock (or on
    the injected ``clock``, whose times are reported as they are).

    Used when no Redis client is given and while Redis is unreachable. Keep it in step with
    :data:`.breaker_scripts.BREAKER_LUA`: the same tests run against both.
    """

    def __init__(self, name: str, config: BreakerConfig, clock: Callable[[], float] | None) -> None:
        self._name = name
        self._config = config
        self._lock = threading.Lock()
        self._clock = clock if clock is not None else time.monotonic
        # Clock time + this = epoch seconds, for the timestamps reported to listeners.
        self._wall_offset = 0.0 if clock is not None else time.time() - time.monotonic()
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._open_until = 0.0
        self._reopens = 0
        self._seq = 0
        self._window: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._probes: dict[str, float] = {}
        self._now = 0.0
        self._transitions: list[BreakerTransition] = []

    def _move(self, to: BreakerState, reason: str) -> None:
        self._transitions.append(
            BreakerTransition(
                name=self._name,
                from_state=self._state,
                to_state=to,
                reason=reason,
                at=self._now + self._wall_offset,
                open_until=self._open_until + self._wall_offset if to is BreakerState.OPEN else None,
            )
        )
        self._state = to
        self._generation += 1
        self._window.clear()
        self._failures = 0
        self._probes.clear()

    def _open_for(self, seconds: float, reason: str) -> None:
        self._open_until = self._now + seconds
        self._move(BreakerState.OPEN, reason)

    def _step(self, action: Callable[[], tuple[bool, str, float] | None] | None = None) -> _Reply:
        """Run ``action`` (an admission decision or a state change) atomically after the
        time-driven changes, and report what happened."""
        with self._lock:
            self._now = self._clock()
            self._transitions = []
            if self._state is BreakerState.OPEN and self._now >= self._open_until:
                self._move(BreakerState.HALF_OPEN, "open_timeout")
            elif self._state is BreakerState.HALF_OPEN:
                self._probes = {pid: until for pid, until in self._probes.items() if until > self._now}
            decision = action() if action else None
            admitted, probe_id, retry_after = decision or (False, "", 0.0)
            return _Reply(self._state, self._generation, admitted, probe_id, retry_after, tuple(self._transitions))

    def _admit(self) -> tuple[bool, str, float]:
        if self._state is BreakerState.CLOSED:
            return True, "", 0.0
        if self._state is BreakerState.OPEN:
            return False, "", self._open_until - self._now
        if len(self._probes) < self._config.half_open_max_calls:
            self._seq += 1
            probe_id = f"{self._generation}:{self._seq}"
            self._probes[probe_id] = self._now + self._config.probe_lease_seconds
            return True, probe_id, 0.0
        return False, "", min(self._probes.values()) - self._now

    def _settle(self, generation: int, probe_id: str, outcome: _Outcome) -> None:
        if generation != self._generation or outcome is _Outcome.IGNORED:
            self._probes.pop(probe_id, None)
            return
        config = self._config
        if self._state is BreakerState.HALF_OPEN:
            if outcome is _Outcome.SUCCESS:
                self._reopens = 0
                self._move(BreakerState.CLOSED, "probe_succeeded")
            else:
                self._reopens += 1
                self._open_for(config.open_duration(self._reopens), "probe_failed")
        elif self._state is BreakerState.CLOSED:
            horizon = self._now - config.window_seconds
            while self._window and self._window[0][0] <= horizon:
                self._failures -= self._window.popleft()[1]
            failed = outcome is _Outcome.FAILURE
            self._window.append((self._now, failed))
            self._failures += failed
            calls = len(self._window)
            if self._failures >= config.failure_threshold:
                self._open_for(config.open_duration(self._reopens), "failure_threshold")
            elif calls >= config.minimum_calls and self._failures / calls >= config.failure_rate_threshold:
                self._open_for(config.open_duration(self._reopens), "failure_rate")

    def _reset(self) -> None:
        self._reopens = 0
        if self._state is BreakerState.CLOSED:
            self._window.clear()
            self._failures = 0
        else:
            self._move(BreakerState.CLOSED, "reset")

    def acquire(self) -> _Reply:
        return self._step(self._admit)

    def record(self, generation: int, probe_id: str, outcome: _Outcome) -> _Reply:
        return self._step(lambda: self._settle(generation, probe_id, outcome))

    def peek(self) -> _Reply:
        return self._step()

    def force_open(self, seconds: float) -> _Reply:
        return self._step(lambda: self._open_for(seconds, "forced_open"))

    def reset(self) -> _Reply:
        return self._step(self._reset)


class BreakerPermit:
    """Admission of one call by :meth:`CircuitBreaker.acquire`. Settle it exactly once with
    :meth:`success`, :meth:`error` or :meth:`release`; :meth:`CircuitBreaker.call` does it for you.

    The permit remembers the generation (and, for a probe, the lease) it was admitted under: an
    outcome reported after the breaker changed state is dropped.
    """

    __slots__ = ("_backend", "_breaker", "_settled", "generation", "probe_id")

    def __init__(self, breaker: CircuitBreaker, backend: _Backend, generation: int, probe_id: str) -> None:
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
        self._settle(_Outcome.SUCCESS)

    def error(self, error: BaseException) -> None:
        """The call raised ``error``; the config decides whether it is a failure, ignored or a
        success (the service answered, e.g. a 404)."""
        self._settle(self._breaker._classify(error))

    def release(self) -> None:
        """The call was abandoned (cancelled, interrupted): count nothing, free the probe lease."""
        self._settle(_Outcome.IGNORED)

    def _settle(self, outcome: _Outcome) -> None:
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
    :param clock: returns the current time in epoch seconds, used instead of Redis ``TIME`` and of
        the fallback's monotonic clock. For tests; production leaves it ``None``: the shared state
        runs on the Redis server's clock, never on a worker's.
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
    ) -> None:
        if not _NAME_PATTERN.fullmatch(name):
            raise ValueError(f"name must match {_NAME_PATTERN.pattern}, got {name!r}")
        if not _NAME_PATTERN.fullmatch(namespace):
            raise ValueError(f"namespace must match {_NAME_PATTERN.pattern}, got {namespace!r}")
        self.name = name
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
            _RedisBackend(shared_client, name, namespace, self.config, clock) if shared_client is not None else None
        )
        self._local = _LocalBackend(name, self.config, clock)

    @property
    def backend(self) -> Literal["redis", "local"]:
        """Where the state lives right now: shared in Redis, or in this process (fallback)."""
        return "redis" if self._shared.up else "local"

    @property
    def redis_keys(self) -> tuple[str, ...]:
        """The Redis keys of this breaker (empty without a Redis client)."""
        return self._redis.keys if self._redis is not None else ()

    @property
    def state(self) -> BreakerState:
        """Current state. Reading it applies a due open -> half_open transition."""
        return self._execute(lambda backend: backend.peek()).state

    def add_listener(self, listener: BreakerListener) -> None:
        """Call ``listener`` with every transition this process performs. Its exceptions are
        logged and never reach the caller."""
        self._listeners.append(listener)

    def _classify(self, error: BaseException) -> _Outcome:
        """How ``error`` counts: ignored, failure, or (the service answered) success."""
        if self.config.ignore(error):
            return _Outcome.IGNORED
        if self.config.record_failure(error):
            return _Outcome.FAILURE
        return _Outcome.SUCCESS

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

    def force_open(self, seconds: float) -> None:
        """Open the breaker for ``seconds`` from now, whatever its state (an operator's action)."""
        _positive(seconds, "seconds")
        self._execute(lambda backend: backend.force_open(seconds))

    def reset(self) -> None:
        """Close the breaker and forget its failures and re-open count."""
        self._execute(lambda backend: backend.reset())

    def _execute(self, step: Callable[[_Backend], _Reply]) -> _Reply:
        return self._execute_on(step)[0]

    def _execute_on(self, step: Callable[[_Backend], _Reply]) -> tuple[_Reply, _Backend]:
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

    def _record(self, backend: _Backend, generation: int, probe_id: str, outcome: _Outcome) -> None:
        if backend is self._local:
            self._notify(backend.record(generation, probe_id, outcome).transitions)
        elif backend is self._redis and self._shared.up:
            self._try_redis(lambda: backend.record(generation, probe_id, outcome))
        # Otherwise the call was admitted by the other backend: its generation means nothing here.

    def _try_redis(self, step: Callable[[], _Reply]) -> _Reply | None:
        """Run a Redis ``step`` and report its transitions; ``None`` if Redis was not used (an
        outage: see :class:`SharedRedis`)."""
        reply = self._shared.run(lambda _client: step(), lambda: None)
        if reply is not None:
            self._notify(reply.transitions)
        return reply

    def _start_local_afresh(self) -> None:
        """Redis answers again: the next outage starts from a clean local state, not this one's."""
        self._local = _LocalBackend(self.name, self.config, self._clock)

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
