"""The breaker's state shared by every worker: the state machine of :file:`breaker.lua` in Redis.

One script holds the whole state machine and is dispatched on a command name, so that every
read-decide-write of a breaker is a single atomic script call: no interleaving of workers can
admit a probe twice, perform a transition twice or let a stale outcome flip a newer state.

Time is Redis ``TIME`` in production (never a worker's clock), or the time in ``ARGV[2]`` when
the breaker was given a clock (tests); every deadline (open period, probe lease, window) is
compared against that time inside the script. Key TTLs only collect garbage. Numbers sent to
Redis or back to Python are formatted as strings: Redis would truncate Lua numbers in replies and
round them in command arguments.

Keys (all four share one hash tag, so the script also runs on Redis Cluster):

* ``KEYS[1]`` state hash: ``state``, ``gen``, ``open_until``, ``reopens``, ``since``, ``seq``
* ``KEYS[2]`` ZSET of the calls in the rolling window, scored by completion time
* ``KEYS[3]`` ZSET of the failed calls in the rolling window (a subset of ``KEYS[2]``)
* ``KEYS[4]`` ZSET of the probe leases, scored by lease expiry

Arguments: ``ARGV[1]`` command (``acquire`` | ``record`` | ``peek`` | ``force_open`` |
``reset`` | ``probe_now``), ``ARGV[2]`` the time in seconds (empty: use Redis ``TIME``),
``ARGV[3..12]`` the configuration in the order of :data:`CONFIG_FIELDS`, then the command's own
arguments: ``record`` takes generation, probe id (empty when the call was not a probe) and outcome
(``success`` | ``failure`` | ``ignored``); ``force_open`` takes the seconds to stay open.
``probe_now`` half-opens an open breaker at once (reason ``probe_requested``) and changes nothing
in another state.

Reply: ``state, generation, admitted (1|0), probe id, retry_after`` followed by five strings per
transition performed by this call: ``from, to, reason, at, open_until`` (empty unless to open).
"""

from __future__ import annotations

from collections.abc import Callable
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

#: Configuration fields passed to the script, in ``ARGV[3..12]`` order.
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
REPLY_HEAD: Final = 5
TRANSITION_FIELDS: Final = 5

BREAKER_LUA: Final = (
    files("airflow_provider_servicetitan.resilience.breaker").joinpath("breaker.lua").read_text(encoding="utf-8")
)


class RedisBackend:
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

    def _run(self, command: str, *extra: str) -> Reply:
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
        return Reply(
            state=BreakerState(head[0]),
            generation=int(head[1]),
            admitted=head[2] == "1",
            probe_id=head[3],
            retry_after=float(head[4]),
            transitions=transitions,
        )

    def acquire(self) -> Reply:
        return self._run("acquire")

    def record(self, generation: int, probe_id: str, outcome: CallOutcome) -> Reply:
        return self._run("record", str(generation), probe_id, outcome.value)

    def peek(self) -> Reply:
        return self._run("peek")

    def force_open(self, seconds: float) -> Reply:
        return self._run("force_open", repr(float(seconds)))

    def reset(self) -> Reply:
        return self._run("reset")

    def request_probe(self) -> Reply:
        return self._run("probe_now")
