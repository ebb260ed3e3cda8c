"""The breaker's state shared by every worker: the state machine of :file:`breaker.lua` in Redis.

One script holds the whole state machine and is dispatched on a command name, so that every
read-decide-write of a breaker is a single atomic script call: no interleaving of workers can
admit a probe twice, perform a transition twice or let a stale outcome flip a newer state.

Time is Redis ``TIME`` in production (never a worker's clock), or the time in ``ARGV[2]`` when
the breaker was given a clock (tests); every deadline (open period, probe lease, window) is
compared against that time inside the script. Numbers sent to Redis or back to Python are
formatted as strings: Redis would truncate Lua numbers in replies and round them in command
arguments.

**What one process keeps between round trips.** Every reply carries the state, its generation and
whether the closed window is *quiet* (holds no failure). While the last reply said closed and is
younger than :attr:`~.BreakerConfig.closed_cache_seconds` (on the process's monotonic clock, or
the injected clock; measured from the moment the request was sent), :meth:`RedisBackend.acquire`
admits from it without a round trip. So a breaker opened by another process stops this one at the
latest ``closed_cache_seconds`` later: that is the staleness bound; open and half-open admission
(the probe leases) is always one atomic script call. Outcomes:

* a failure, and any outcome of a probe or while the window is not quiet, is recorded at once
  (one round trip), together with the buffered successes;
* a success while the window is quiet is buffered: successes alone cannot open a window without
  failures. The buffer (completion times, sent as ages so that no worker clock reaches Redis)
  goes with the next round trip of any kind, or on its own once it holds
  :attr:`~.BreakerConfig.success_batch_size` successes or the state it was admitted under is
  older than ``closed_cache_seconds``. The script counts them only if the breaker is still in
  the closed generation they were admitted under (stale outcomes are dropped, as always);
* an outcome that counts as nothing (``ignored`` and not a probe) costs no round trip.

Meanwhile other processes judge the failure rate without this process's buffered successes (at
most ``success_batch_size`` of them, at most ``closed_cache_seconds`` old): the error is towards
opening, never towards staying closed. In steady closed state a process makes about one round
trip per ``success_batch_size`` calls or per ``closed_cache_seconds``, whichever comes first; with
failures in the window, one per call.

Keys (all four share one hash tag, so the script also runs on Redis Cluster):

* ``KEYS[1]`` state hash: ``state``, ``gen``, ``open_until``, ``reopens``, ``since``, ``seq``,
  ``last_failure`` (time of the newest failure of the closed window, ``0`` if none) and
  ``ttl_at`` (when the keys expire)
* ``KEYS[2]`` ZSET of the calls in the rolling window, scored by completion time
* ``KEYS[3]`` ZSET of the failed calls in the rolling window (a subset of ``KEYS[2]``)
* ``KEYS[4]`` ZSET of the probe leases, scored by lease expiry

Key TTLs only collect garbage: a key gets one when it is created, and all of them get a fresh one
(``key_ttl_seconds`` plus what is left of the open period) when the state changes or once the
remaining TTL fell below ``(key_ttl_seconds + longest deadline) / 2``: never ``EXPIRE`` per call,
and a key in use always outlives the deadlines it holds.

Arguments: ``ARGV[1]`` command (``acquire`` | ``record`` | ``peek`` | ``flush`` | ``force_open``
| ``reset`` | ``probe_now``), ``ARGV[2]`` the time in seconds (empty: use Redis ``TIME``),
``ARGV[3]`` the configuration: the values of :data:`CONFIG_FIELDS` in that order, separated by
spaces (one argument is cheaper to send than ten), ``ARGV[4..6]`` the command's own arguments
(empty strings when unused): ``record`` takes generation, probe id (empty when the call was not a
probe) and outcome (``success`` | ``failure`` | ``ignored``); ``force_open`` takes the seconds to
stay open. ``flush`` only writes the buffered successes: it performs no transition, not even a due
one (it also runs at interpreter exit, where nobody listens; then, with the argument ``exit``, it
does not create the keys again if they vanished). ``probe_now`` half-opens an open
breaker at once (reason ``probe_requested``) and changes nothing in another state. ``ARGV[7]`` is
the generation of the buffered successes (empty when there are none) and ``ARGV[8..]`` their ages
in seconds.

Reply: ``state, generation, admitted (1|0), probe id, retry_after, quiet (1|0)`` followed by five
strings per transition performed by this call: ``from, to, reason, at, open_until`` (empty unless
to open).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final

from airflow_provider_servicetitan.resilience.breaker.config import (
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CallOutcome,
    Reply,
)

__all__ = ["RedisBackend"]

#: Configuration fields passed to the script in ``ARGV[3]``, in this order.
CONFIG_FIELDS: Final = (
    "failure_threshold",
    "window_seconds",
    "failure_rate_threshold",
    "minimum_calls",
    "open_seconds",
    "max_open_seconds",
    "open_backoff_multiplier",
    "half_open_max_calls",
    "probe_lease_seconds",
    "key_ttl_seconds",
)

#: Number of reply fields before the transitions, and per transition.
REPLY_HEAD: Final = 6
#: Slots of the command's own arguments, ``ARGV[4..6]``.
COMMAND_ARGS: Final = 3
TRANSITION_FIELDS: Final = 5

BREAKER_LUA: Final = (
    files("airflow_provider_servicetitan.resilience.breaker").joinpath("breaker.lua").read_text(encoding="utf-8")
)


#: Every backend of this process, so that buffered successes are written when it exits.
_LIVE: weakref.WeakSet[RedisBackend] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Write what every breaker of this process still buffers (best effort: Redis may be gone)."""
    for backend in list(_LIVE):
        with contextlib.suppress(Exception):
            backend.flush(at_exit=True)


@dataclass(frozen=True)
class _Known:
    """What the last round trip said, and when it was sent (on the process's clock)."""

    state: BreakerState
    generation: int
    quiet: bool
    sent_at: float


class RedisBackend:
    """The shared state machine: every decision that is not a closed-state admission or a buffered
    success is one call of the Lua script, timed by Redis ``TIME`` unless a ``clock`` is given (its
    time is then passed to the script, and it also times the cache and the buffer)."""

    def __init__(
        self, client: Any, name: str, namespace: str, config: BreakerConfig, clock: Callable[[], float] | None
    ) -> None:
        self._name = name
        self._clock = clock
        self._local_clock = clock if clock is not None else time.monotonic
        self._cache_seconds = config.closed_cache_seconds
        self._batch_size = config.success_batch_size
        self._script = client.register_script(BREAKER_LUA)
        base = f"{namespace}:breaker:{{{name}}}"
        self.keys = (f"{base}:state", f"{base}:calls", f"{base}:failures", f"{base}:probes")
        # A failure threshold of None (the rate alone decides) goes to the script as 0.
        self._config_arg = " ".join(repr(getattr(config, name) or 0) for name in CONFIG_FIELDS)
        self._lock = threading.Lock()
        self._known: _Known | None = None
        self._buffer: list[float] = []  # completion times (local clock) of buffered successes
        self._buffer_generation = 0
        _LIVE.add(self)

    def _run(self, command: str, *extra: str) -> Reply:
        with self._lock:
            buffered, generation = self._buffer, self._buffer_generation
            self._buffer = []
        sent_at = self._local_clock()
        now = repr(float(self._clock())) if self._clock is not None else ""
        args = [command, now, self._config_arg, *extra, *[""] * (COMMAND_ARGS - len(extra))]
        if buffered:
            args.append(str(generation))
            args.extend(repr(sent_at - at) for at in buffered)
        else:
            args.append("")
        try:
            raw = self._script(keys=list(self.keys), args=args)
        except BaseException:
            self.forget()
            raise
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
        reply = Reply(
            state=BreakerState(head[0]),
            generation=int(head[1]),
            admitted=head[2] == "1",
            probe_id=head[3],
            retry_after=float(head[4]),
            transitions=transitions,
        )
        with self._lock:
            if self._known is None or sent_at >= self._known.sent_at:
                self._known = _Known(reply.state, reply.generation, head[5] == "1", sent_at)
            if self._buffer and self._buffer_generation != reply.generation:
                self._buffer = []  # buffered while this reply was on its way, under an older generation
        return reply

    def _fresh_closed(self, now: float) -> _Known | None:
        """The last reply if it said closed and may still be trusted (call under the lock)."""
        known = self._known
        if known is not None and known.state is BreakerState.CLOSED and now - known.sent_at < self._cache_seconds:
            return known
        return None

    @staticmethod
    def _nothing(known: _Known | None) -> Reply:
        """The reply of a step decided without Redis: nothing admitted, nothing performed."""
        if known is None:
            return Reply(BreakerState.CLOSED, 0, False, "", 0.0, ())
        return Reply(known.state, known.generation, False, "", 0.0, ())

    def acquire(self) -> Reply:
        with self._lock:
            known = self._fresh_closed(self._local_clock())
        if known is not None:
            return Reply(BreakerState.CLOSED, known.generation, True, "", 0.0, ())
        return self._run("acquire")

    def record(self, generation: int, probe_id: str, outcome: CallOutcome) -> Reply:
        if not probe_id and outcome is CallOutcome.IGNORED:
            return self._nothing(self._known)  # counts as nothing, and holds no lease
        if not probe_id and outcome is CallOutcome.SUCCESS:
            with self._lock:
                known = self._known
                if known is not None and known.state is BreakerState.CLOSED and known.quiet:
                    if generation != known.generation:
                        return self._nothing(known)  # stale: admitted before a state change
                    now = self._local_clock()
                    if self._buffer_generation != generation:
                        self._buffer = []
                    self._buffer.append(now)
                    self._buffer_generation = generation
                    if len(self._buffer) < self._batch_size and now - known.sent_at < self._cache_seconds:
                        return self._nothing(known)
                    flush = True
                else:
                    flush = False
            if flush:
                return self._run("flush")
        return self._run("record", str(generation), probe_id, outcome.value)

    def flush(self, *, at_exit: bool = False) -> Reply | None:
        """Write the buffered successes now; ``None`` if there were none (no round trip). At exit,
        keys that expired or were deleted meanwhile are not created again."""
        if not self._buffer:
            return None
        return self._run("flush", "exit" if at_exit else "")

    def forget(self) -> None:
        """Drop what the last round trip said and the buffered successes (Redis failed)."""
        with self._lock:
            self._known = None
            self._buffer = []

    def peek(self) -> Reply:
        return self._run("peek")

    def force_open(self, seconds: float) -> Reply:
        return self._run("force_open", repr(float(seconds)))

    def reset(self) -> Reply:
        return self._run("reset")

    def request_probe(self) -> Reply:
        return self._run("probe_now")
