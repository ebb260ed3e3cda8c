"""What a circuit breaker is made of: its rules, its states, its transitions, how an error counts.

Both state machines (:mod:`.local` and :mod:`.redis_backend`) and the facade share these types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from airflow_provider_servicetitan.resilience.checks import is_finite_number, require_positive, require_positive_int
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS

__all__ = [
    "Backend",
    "BreakerConfig",
    "BreakerListener",
    "BreakerState",
    "BreakerTransition",
    "CallOutcome",
    "Classifier",
    "Reply",
    "count_every_error",
]


#: Largest :attr:`BreakerConfig.success_batch_size`: one script call carries the whole batch.
MAX_SUCCESS_BATCH = 1000


class BreakerState(StrEnum):
    """State of a breaker. Compares equal to its string value (``"closed"`` etc.)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CallOutcome(StrEnum):
    """How one call counts: a failure, a success (the service answered), or nothing."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


#: Decides how a call that raised ``error`` counts. The breaker knows nothing of the service it
#: protects: the caller that does passes its classifier.
Classifier = Callable[[BaseException], CallOutcome]


def count_every_error(error: BaseException) -> CallOutcome:
    """The default classifier: every exception is a failure; an interruption that is not an
    ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, a cancellation) counts as nothing."""
    return CallOutcome.FAILURE if isinstance(error, Exception) else CallOutcome.IGNORED


@dataclass(frozen=True)
class BreakerConfig:
    """Rules of a breaker. Every process sharing a breaker name must use the same config.

    :param failure_threshold: also open after this many failures inside the window, whatever the
        calls around them; ``None`` (the default): only the failure rate decides. A count alone
        does not scale with traffic: at 60 calls a second, 5 failures a minute is a 0.14% error
        rate, which retries absorb and which must not stop a sync.
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
    :param closed_cache_seconds: how long a process may admit calls from the *closed* state it
        learned in its last Redis round trip, without asking Redis again (and how long it may
        hold successes back, see ``success_batch_size``). This is the staleness bound of the
        shared breaker: once it opens, every other process stops admitting calls within
        ``closed_cache_seconds`` (counted on its own monotonic clock, or the injected clock, from
        the sending of a round trip answered before the opening), sooner if it records a failure
        or flushes its successes first.
        ``0`` asks Redis at every call. Open and half-open admission is always decided in Redis.
    :param success_batch_size: successes of closed-state calls a process buffers and writes to
        Redis in one round trip, while the window holds no failure (successes alone can then not
        open the breaker). The buffer is written when it holds this many, when it is older than
        ``closed_cache_seconds``, and with any other round trip (a failure is never delayed by
        it). ``1`` writes every success at once. At most 1000.
    """

    failure_threshold: int | None = None
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
    closed_cache_seconds: float = 1.0
    success_batch_size: int = 100

    def __post_init__(self) -> None:
        if self.failure_threshold is not None:
            require_positive_int(self.failure_threshold, "failure_threshold")
        for name in ("minimum_calls", "half_open_max_calls", "success_batch_size"):
            require_positive_int(getattr(self, name), name)
        if self.success_batch_size > MAX_SUCCESS_BATCH:
            raise ValueError(f"success_batch_size must be <= {MAX_SUCCESS_BATCH}, got {self.success_batch_size!r}")
        if not is_finite_number(self.closed_cache_seconds) or self.closed_cache_seconds < 0:
            raise ValueError(f"closed_cache_seconds must be a finite number >= 0, got {self.closed_cache_seconds!r}")
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
            require_positive(getattr(self, name), name)
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
    ``probe_requested``, ``probe_succeeded``, ``probe_failed``, ``forced_open``, ``reset``. ``from_state`` equals
    ``to_state`` when an open breaker is forced open again.
    """

    name: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at: float
    open_until: float | None


BreakerListener = Callable[[BreakerTransition], None]


@dataclass(frozen=True)
class Reply:
    """What one atomic step of a backend decided."""

    state: BreakerState
    generation: int
    admitted: bool
    probe_id: str
    retry_after: float
    transitions: tuple[BreakerTransition, ...]


class Backend(Protocol):
    """Where a breaker's state lives: each method is one atomic step of the state machine."""

    def acquire(self) -> Reply: ...

    def record(self, generation: int, probe_id: str, outcome: CallOutcome) -> Reply: ...

    def peek(self) -> Reply: ...

    def force_open(self, seconds: float) -> Reply: ...

    def reset(self) -> Reply: ...

    def request_probe(self) -> Reply: ...
