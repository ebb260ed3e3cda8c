"""The sandbox clock: wall time plus an offset that tests move forward instead of waiting."""

from __future__ import annotations

import time


class SandboxClock:
    """Now, as the sandbox sees it.

    Token expiry, outage windows, rate-limit refills, the recent-changes delay and the
    ``modifiedOn`` of mutated records all read this clock. ``advance`` moves it forward without
    waiting. A frozen clock does not follow wall time at all: only ``advance`` moves it, which makes
    rate limits and expiry exactly reproducible in tests.
    """

    def __init__(self, *, frozen: bool) -> None:
        self._frozen = frozen
        self._start_wall = time.time()
        self._start_monotonic = time.monotonic()
        self._offset = 0.0

    @property
    def offset(self) -> float:
        """Seconds the clock has been advanced by."""
        return self._offset

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        elapsed = 0.0 if self._frozen else time.monotonic() - self._start_monotonic
        return self._start_wall + elapsed + self._offset

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        return int(self.now() * 1000)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        self._offset += seconds

    def reset(self) -> None:
        """Drop the offset (a frozen clock is back at its start)."""
        self._offset = 0.0
