"""When will a breaker let a call through? Read from its Redis keys, without touching them.

A task that found its breaker open can wait elsewhere (an Airflow trigger) and must learn when to
come back. It reads the breaker's state hash and probe leases (layout in :mod:`.redis_backend`)
with Redis ``TIME`` and asks :func:`seconds_until_admission`: the read-only mirror of the script's
admission rule (``advance`` then ``acquire`` in :file:`breaker.lua`). The watcher must not run the
script itself: that would perform the due open -> half_open transition, and a transition is
reported only to the process that performs it, which for a watcher has no listeners.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from airflow_provider_servicetitan.resilience.breaker.config import BreakerState
from airflow_provider_servicetitan.resilience.checks import require_positive_int

__all__ = ["STATE_FIELDS", "seconds_until_admission"]

#: The fields of the state hash the decision reads, in the order a watcher may ``HMGET`` them.
STATE_FIELDS: Final = ("state", "open_until")


def seconds_until_admission(
    fields: Mapping[str, str | None],
    probe_leases: Iterable[float],
    *,
    now: float,
    half_open_max_calls: int,
) -> float:
    """Seconds from ``now`` until the breaker admits a call; ``0.0`` if it would admit one now.

    Closed: now. Open: at ``open_until`` (the call made then half-opens it and is a probe).
    Half-open: now if fewer than ``half_open_max_calls`` probe leases are unexpired, else when
    enough of them have expired. A probe's outcome, a reset or a probe request changes the answer:
    watchers ask again, they do not sleep on it.

    :param fields: the state hash, decoded (:data:`STATE_FIELDS`; a missing field or an empty
        hash, e.g. expired keys, means a closed breaker).
    :param probe_leases: the scores of the probe-lease set (lease expiry times), expired ones
        included.
    :param now: the breaker's clock: Redis ``TIME`` (in epoch seconds), as the script uses.
    :param half_open_max_calls: the breaker's :attr:`BreakerConfig.half_open_max_calls`.
    """
    require_positive_int(half_open_max_calls, "half_open_max_calls")
    state = BreakerState(fields.get("state") or BreakerState.CLOSED)
    if state is BreakerState.CLOSED:
        return 0.0
    if state is BreakerState.OPEN:
        return max(0.0, float(fields.get("open_until") or 0.0) - now)
    live = sorted(expiry for expiry in probe_leases if expiry > now)
    if len(live) < half_open_max_calls:
        return 0.0
    # The script drops a lease when its expiry is reached: one slot frees when this one expires.
    return live[len(live) - half_open_max_calls] - now
