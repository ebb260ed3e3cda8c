"""Fault knobs and named fault profiles, with the parsing that lets knobs come as strings (CLI)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from airflow_provider_servicetitan.sandbox.licensing import checked_modules

RetryAfterFormat = Literal["seconds", "http-date"]
RETRY_AFTER_FORMATS: tuple[RetryAfterFormat, ...] = ("seconds", "http-date")


@dataclass(frozen=True)
class FaultConfig:
    """The fault knobs. Rates are probabilities per request (per record for ``malformed_rate``).

    ``hold_after_pages`` is not random: once that many export pages have been served to a tenant,
    its API requests are held unanswered until the knob changes (a test's way to stop a client at a
    known page). ``retry_after_format`` is how every 429 says when to come back.
    """

    fault_seed: int = 0
    tenants: tuple[int, ...] | None = None
    error_rate: float = 0.0
    latency: float = 0.0
    latency_jitter: float = 0.0
    timeout_rate: float = 0.0
    timeout_hold: float = 120.0
    reset_rate: float = 0.0
    outage_seconds: float = 0.0
    burst_429: int = 0
    burst_rate: float = 0.0
    burst_size: int = 3
    burst_429_retry_after: int = 1
    retry_after_format: RetryAfterFormat = "seconds"
    maintenance_rate: float = 0.0
    malformed_rate: float = 0.0
    broken_json_rate: float = 0.0
    truncated_rate: float = 0.0
    token_error_rate: float = 0.0
    rate_limit: int | None = None
    unlicensed_modules: dict[int, tuple[str, ...]] = field(default_factory=dict)
    hold_after_pages: int | None = None

    def covers(self, tenant_id: int | None) -> bool:
        """Whether faults apply to ``tenant_id`` (``None``: a request of no known tenant)."""
        return self.tenants is None or tenant_id in self.tenants

    def with_knobs(self, knobs: Mapping[str, Any]) -> FaultConfig:
        """A copy with ``knobs`` applied; values may be strings (``--fault KEY=VALUE``).

        :raises ValueError: unknown knob or invalid value.
        """
        changes = {}
        for name, value in knobs.items():
            parser = _PARSERS.get(name)
            if parser is None:
                raise ValueError(f"unknown fault knob {name!r}; known knobs: {', '.join(_PARSERS)}")
            try:
                changes[name] = parser(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"fault knob {name}={value!r}: {exc}") from None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The knobs as JSON-ready values."""
        values = dataclasses.asdict(self)
        values["tenants"] = None if self.tenants is None else list(self.tenants)
        values["unlicensed_modules"] = {str(tenant): list(mods) for tenant, mods in self.unlicensed_modules.items()}
        return values


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    return float(value)


def _rate(value: Any) -> float:
    rate = _number(value)
    if not 0.0 <= rate <= 1.0:
        raise ValueError("a rate is between 0 and 1")
    return rate


def _seconds(value: Any) -> float:
    seconds = _number(value)
    if seconds < 0:
        raise ValueError("seconds cannot be negative")
    return seconds


def _integer(value: Any) -> int:
    number = _number(value)
    if not number.is_integer():
        raise ValueError("expected an integer")
    return int(number)


def _count(value: Any) -> int:
    count = _integer(value)
    if count < 0:
        raise ValueError("a count cannot be negative")
    return count


def _positive(value: Any) -> int:
    number = _integer(value)
    if number < 1:
        raise ValueError("expected an integer >= 1")
    return number


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "all"))


def _tenant_scope(value: Any) -> tuple[int, ...] | None:
    if _is_unset(value):
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(_integer(item) for item in items)


def _optional_limit(value: Any) -> int | None:
    return None if _is_unset(value) else _positive(value)


def _optional_count(value: Any) -> int | None:
    return None if _is_unset(value) else _count(value)


def _retry_after_format(value: Any) -> RetryAfterFormat:
    if value not in RETRY_AFTER_FORMATS:
        raise ValueError(f"expected one of {', '.join(RETRY_AFTER_FORMATS)}")
    return cast(RetryAfterFormat, value)


def _unlicensed(value: Any) -> dict[int, tuple[str, ...]]:
    """``{tenant: [module, ...]}``, or the string ``TENANT:MODULE[,TENANT:MODULE...]``."""
    if _is_unset(value):
        return {}
    if isinstance(value, str):
        pairs: dict[int, list[str]] = {}
        for pair in value.split(","):
            tenant, sep, module = pair.partition(":")
            if not sep:
                raise ValueError("expected TENANT:MODULE[,TENANT:MODULE...]")
            pairs.setdefault(_integer(tenant), []).append(module)
        return {tenant: checked_modules(modules) for tenant, modules in pairs.items()}
    return {_integer(tenant): checked_modules(modules) for tenant, modules in dict(value).items()}


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "fault_seed": _integer,
    "tenants": _tenant_scope,
    "error_rate": _rate,
    "latency": _seconds,
    "latency_jitter": _seconds,
    "timeout_rate": _rate,
    "timeout_hold": _seconds,
    "reset_rate": _rate,
    "outage_seconds": _seconds,
    "burst_429": _count,
    "burst_rate": _rate,
    "burst_size": _positive,
    "burst_429_retry_after": _positive,
    "retry_after_format": _retry_after_format,
    "maintenance_rate": _rate,
    "malformed_rate": _rate,
    "broken_json_rate": _rate,
    "truncated_rate": _rate,
    "token_error_rate": _rate,
    "rate_limit": _optional_limit,
    "unlicensed_modules": _unlicensed,
    "hold_after_pages": _optional_count,
}

FAULT_KNOBS: tuple[str, ...] = tuple(_PARSERS)

PROFILES: dict[str, FaultConfig] = {
    "none": FaultConfig(),
    "flaky": FaultConfig(error_rate=0.03, reset_rate=0.02, latency_jitter=0.05),
    "ratelimited": FaultConfig(rate_limit=5, burst_rate=0.02, burst_size=3, burst_429_retry_after=1),
    "outage": FaultConfig(outage_seconds=300.0),
    "chaos": FaultConfig(
        error_rate=0.05,
        latency_jitter=0.1,
        timeout_rate=0.01,
        timeout_hold=30.0,
        reset_rate=0.02,
        burst_rate=0.02,
        maintenance_rate=0.02,
        malformed_rate=0.02,
        broken_json_rate=0.01,
        truncated_rate=0.01,
        token_error_rate=0.05,
        rate_limit=20,
    ),
}


def fault_config(profile: str, knobs: Mapping[str, Any]) -> FaultConfig:
    """The profile ``profile`` with ``knobs`` applied.

    :raises ValueError: unknown profile, unknown knob or invalid value.
    """
    try:
        base = PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown fault profile {profile!r}; profiles: {', '.join(PROFILES)}") from None
    return base.with_knobs(knobs)
