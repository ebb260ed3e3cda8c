"""The sandbox's settings: size of the fake data, limits, clock and faults at start."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_servicetitan.sandbox.knobs import fault_config
from airflow_provider_servicetitan.sandbox.licensing import checked_modules

_POSITIVE_SETTINGS = (
    "tenants",
    "records",
    "token_expires_in",
    "token_rate_limit",
    "rate_limit",
    "max_page_size",
    "export_page_size",
)


@dataclass(frozen=True)
class SandboxConfig:
    """Everything a sandbox is started with; ``POST /_sandbox/reset`` returns to exactly this.

    :param tenants: number of tenants (ids 1001, 1002, ...), each with its own credentials.
    :param records: records per tenant per resource.
    :param seed: seed of the data, the credentials and the fault RNG.
    :param faults: fault profile at start (see ``PROFILES``).
    :param fault_overrides: fault knobs applied on top of the profile (see ``FAULT_KNOBS``).
    :param token_expires_in: lifetime of an access token, in seconds of the sandbox clock.
    :param token_rate_limit: token requests per minute per client id before 429.
    :param rate_limit: API requests per second per (app key, tenant) before 429.
    :param recent_changes_delay: seconds before a change shows in an export feed read with
        ``includeRecentChanges=false``.
    :param max_page_size: largest ``pageSize`` a list endpoint accepts.
    :param export_page_size: records per export page.
    :param unlicensed_modules: tenant id -> modules (``crm``, ``jpm``, ...) it has not licensed (403).
    :param frozen_clock: the sandbox clock moves only when advanced, never by itself.
    :param host: interface to listen on.
    :param port: port to listen on; 0 picks a free one.
    :param log_level: uvicorn's log level.
    """

    tenants: int = 2
    records: int = 200
    seed: int = 1
    faults: str = "none"
    fault_overrides: Mapping[str, Any] = field(default_factory=dict)
    token_expires_in: int = 900
    token_rate_limit: int = 30
    rate_limit: int = 60
    recent_changes_delay: float = 900.0
    max_page_size: int = 5000
    export_page_size: int = 500
    unlicensed_modules: Mapping[int, Sequence[str]] = field(default_factory=dict)
    frozen_clock: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    log_level: str = "warning"

    def __post_init__(self) -> None:
        for name in _POSITIVE_SETTINGS:
            self._require(getattr(self, name) >= 1, f"{name} must be >= 1")
        self._require(self.recent_changes_delay >= 0, "recent_changes_delay cannot be negative")
        self._require(0 <= self.port <= 65535, "port must be between 0 and 65535")
        for modules in self.unlicensed_modules.values():
            checked_modules(modules)
        fault_config(self.faults, self.fault_overrides)

    @staticmethod
    def _require(condition: bool, message: str) -> None:
        if not condition:
            raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        values = dataclasses.asdict(self)
        values["fault_overrides"] = dict(self.fault_overrides)
        values["unlicensed_modules"] = {str(k): list(v) for k, v in self.unlicensed_modules.items()}
        return values
