"""Token-bucket rate limits on the sandbox clock: a full bucket allows a burst of ``limit`` calls."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class _Bucket:
    limit: int
    period: float
    tokens: float
    updated: float


class RateLimiter:
    """Allows ``limit`` calls per ``period`` seconds for each key, refilled continuously."""

    def __init__(self) -> None:
        self._buckets: dict[Hashable, _Bucket] = {}

    def acquire(self, key: Hashable, limit: int, period: float, now: float) -> int | None:
        """Take one call for ``key``: ``None`` if allowed, else the Retry-After in whole seconds (>= 1)."""
        bucket = self._buckets.get(key)
        if bucket is None or bucket.limit != limit or bucket.period != period:
            bucket = _Bucket(limit, period, float(limit), now)
            self._buckets[key] = bucket
        rate = limit / period
        bucket.tokens = min(float(limit), bucket.tokens + max(0.0, now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - bucket.tokens) / rate))
