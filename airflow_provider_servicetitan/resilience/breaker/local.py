"""The breaker's state machine for one process: a Python copy of :file:`breaker.lua`.

Used when no Redis client is given and while Redis is unreachable. Keep it in step with the Lua
script: the same tests run against both.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from airflow_provider_servicetitan.resilience.breaker.config import (
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CallOutcome,
    Reply,
)

__all__ = ["LocalBackend"]


class LocalBackend:
    """The same state machine as the Lua script, for one process, on the monotonic clock (or on
    the injected ``clock``, whose times are reported as they are)."""

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

    def _step(self, action: Callable[[], tuple[bool, str, float] | None] | None = None) -> Reply:
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
            return Reply(self._state, self._generation, admitted, probe_id, retry_after, tuple(self._transitions))

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

    def _settle(self, generation: int, probe_id: str, outcome: CallOutcome) -> None:
        if generation != self._generation or outcome is CallOutcome.IGNORED:
            self._probes.pop(probe_id, None)
            return
        config = self._config
        if self._state is BreakerState.HALF_OPEN:
            if outcome is CallOutcome.SUCCESS:
                self._reopens = 0
                self._move(BreakerState.CLOSED, "probe_succeeded")
            else:
                self._reopens += 1
                self._open_for(config.open_duration(self._reopens), "probe_failed")
        elif self._state is BreakerState.CLOSED:
            horizon = self._now - config.window_seconds
            while self._window and self._window[0][0] <= horizon:
                self._failures -= self._window.popleft()[1]
            failed = outcome is CallOutcome.FAILURE
            self._window.append((self._now, failed))
            self._failures += failed
            calls = len(self._window)
            if config.failure_threshold is not None and self._failures >= config.failure_threshold:
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

    def _request_probe(self) -> None:
        if self._state is BreakerState.OPEN:
            self._move(BreakerState.HALF_OPEN, "probe_requested")

    def acquire(self) -> Reply:
        return self._step(self._admit)

    def record(self, generation: int, probe_id: str, outcome: CallOutcome) -> Reply:
        return self._step(lambda: self._settle(generation, probe_id, outcome))

    def peek(self) -> Reply:
        return self._step()

    def force_open(self, seconds: float) -> Reply:
        return self._step(lambda: self._open_for(seconds, "forced_open"))

    def reset(self) -> Reply:
        return self._step(self._reset)

    def request_probe(self) -> Reply:
        return self._step(self._request_probe)
