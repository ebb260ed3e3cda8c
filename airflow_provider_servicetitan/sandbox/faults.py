"""Fault injection: the seeded decisions taken for each request, from the active knobs.

Every decision comes from a seeded RNG, one stream per tenant (and one for the token endpoint),
reseeded whenever the faults are set. Each API request of a tenant draws the same number of
values in the same order whatever the knobs are, so the n-th request of a tenant meets the same
fate on every replay with the same ``seed`` and ``fault_seed``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from airflow_provider_servicetitan.sandbox.knobs import FaultConfig, fault_config

_ERROR_STATUSES = (500, 502, 503)


class FaultKind(StrEnum):
    """What was injected; the keys of ``faults_injected`` in the stats."""

    LATENCY = "latency"
    OUTAGE = "outage"
    BURST_429 = "burst_429"
    TIMEOUT = "timeout"
    RESET = "reset"
    MAINTENANCE = "maintenance"
    ERROR_5XX = "error_5xx"
    BROKEN_JSON = "broken_json"
    TRUNCATED = "truncated"
    MALFORMED_RECORD = "malformed_record"
    TOKEN_ERROR = "token_error"  # noqa: S105 - a fault name


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one API request.

    ``action`` replaces the answer (``status`` and ``retry_after`` say with what), ``body_fault``
    spoils a successful answer, ``delay`` comes first.
    """

    delay: float = 0.0
    action: FaultKind | None = None
    status: int = 200
    retry_after: int | None = None
    body_fault: FaultKind | None = None


NO_FAULT = FaultPlan()


class _Draws(NamedTuple):
    """The random values one API request draws, always all of them, always in this order."""

    jitter: float
    burst: float
    timeout: float
    reset: float
    maintenance: float
    error: float
    status: float
    broken_json: float
    truncated: float

    @classmethod
    def take(cls, rng: random.Random) -> _Draws:
        return cls(*(rng.random() for _ in cls._fields))


_TOKEN_STREAM = "token"  # noqa: S105 - an RNG stream name


class FaultInjector:
    """Holds the active faults and decides, request by request, what goes wrong."""

    def __init__(self, seed: int, profile: str, knobs: Mapping[str, Any], now: float) -> None:
        self._seed = seed
        self._config = FaultConfig()
        self._profile = profile
        self._outage_until = 0.0
        self._burst_remaining = 0
        self._pages_served: Counter[int] = Counter()
        self._rngs: dict[int | str, random.Random] = {}
        self.apply(profile, knobs, now)

    @property
    def config(self) -> FaultConfig:
        return self._config

    def apply(self, profile: str | None, knobs: Mapping[str, Any], now: float) -> None:
        """Set the faults: ``profile`` (or the current faults) with ``knobs`` on top.

        The RNG streams are reseeded. An outage window starts now when ``outage_seconds`` is given
        (as a knob or by the profile); a 429 burst starts when ``burst_429`` is given or a profile
        is chosen; export pages are counted afresh for ``hold_after_pages`` when it is given or a
        profile is chosen.

        :raises ValueError: unknown profile, unknown knob or invalid value.
        """
        config = self._config.with_knobs(knobs) if profile is None else fault_config(profile, knobs)
        self._config = config
        if profile is not None:
            self._profile = profile
        if profile is not None or "outage_seconds" in knobs:
            self._outage_until = now + config.outage_seconds
        if profile is not None or "burst_429" in knobs:
            self._burst_remaining = config.burst_429
        if profile is not None or "hold_after_pages" in knobs:
            self._pages_served = Counter()
        self._rngs = {}

    def describe(self, now: float) -> dict[str, Any]:
        """The active faults, JSON-ready, with the state of the outage window and of the burst."""
        return {
            "profile": self._profile,
            **self._config.to_dict(),
            "outage_remaining": max(0.0, self._outage_until - now),
            "burst_remaining": self._burst_remaining,
            "export_pages_served": {str(tenant): n for tenant, n in sorted(self._pages_served.items())},
        }

    def export_page_served(self, tenant_id: int) -> None:
        """Count an export page served intact to ``tenant_id`` (for ``hold_after_pages``)."""
        self._pages_served[tenant_id] += 1

    def holds(self, tenant_id: int) -> bool:
        """Whether API requests of ``tenant_id`` are held now: ``hold_after_pages`` pages were served."""
        config = self._config
        limit = config.hold_after_pages
        return limit is not None and config.covers(tenant_id) and self._pages_served[tenant_id] >= limit

    def _rng(self, stream: int | str) -> random.Random:
        rng = self._rngs.get(stream)
        if rng is None:
            rng = random.Random(f"{self._seed}:{self._config.fault_seed}:{stream}")  # noqa: S311
            self._rngs[stream] = rng
        return rng

    def plan(self, tenant_id: int, now: float) -> FaultPlan:
        """Decide the fate of the next API request of ``tenant_id``."""
        config = self._config
        if not config.covers(tenant_id):
            return NO_FAULT
        draws = _Draws.take(self._rng(tenant_id))
        delay = config.latency + config.latency_jitter * draws.jitter
        body_fault = None
        if draws.broken_json < config.broken_json_rate:
            body_fault = FaultKind.BROKEN_JSON
        elif draws.truncated < config.truncated_rate:
            body_fault = FaultKind.TRUNCATED
        if self._outage_until > now:
            return FaultPlan(delay, FaultKind.OUTAGE, 503)
        if self._burst_remaining == 0 and draws.burst < config.burst_rate:
            self._burst_remaining = config.burst_size
        if self._burst_remaining > 0:
            self._burst_remaining -= 1
            return FaultPlan(delay, FaultKind.BURST_429, 429, retry_after=config.burst_429_retry_after)
        if draws.timeout < config.timeout_rate:
            return FaultPlan(delay, FaultKind.TIMEOUT, 504)
        if draws.reset < config.reset_rate:
            return FaultPlan(delay, FaultKind.RESET)
        if draws.maintenance < config.maintenance_rate:
            return FaultPlan(delay, FaultKind.MAINTENANCE, 409)
        if draws.error < config.error_rate:
            status = _ERROR_STATUSES[int(draws.status * len(_ERROR_STATUSES))]
            return FaultPlan(delay, FaultKind.ERROR_5XX, status)
        return FaultPlan(delay, body_fault=body_fault)

    def token_error(self, tenant_id: int | None) -> int | None:
        """The 5xx status the next token request fails with, or ``None``."""
        config = self._config
        if not config.covers(tenant_id):
            return None
        rng = self._rng(_TOKEN_STREAM)
        failed, pick = rng.random(), rng.random()
        if failed >= config.token_error_rate:
            return None
        return _ERROR_STATUSES[int(pick * len(_ERROR_STATUSES))]

    def malform(self, tenant_id: int, resource: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """A broken copy of ``record`` if it is one of the malformed ones, else ``None``.

        Decided per (tenant, resource, id), so the same record is broken on every fetch while the
        knob is on, and served intact once it is off. The breakage is one of: no ``id``, ``id`` as a
        non-numeric string, ``modifiedOn`` that is not a date.
        """
        config = self._config
        if config.malformed_rate == 0.0 or not config.covers(tenant_id):
            return None
        rng = random.Random(  # noqa: S311
            f"{self._seed}:{config.fault_seed}:{tenant_id}:{resource}:{record['id']}"
        )
        if rng.random() >= config.malformed_rate:
            return None
        broken = dict(record)
        breakage = rng.randrange(3)
        if breakage == 0:
            del broken["id"]
        elif breakage == 1:
            broken["id"] = f"ST-{record['id']}"
        else:
            broken["modifiedOn"] = "not-a-date"
        return broken
