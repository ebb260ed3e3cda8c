"""Everything a running sandbox holds, and the way back to its start.

All of it lives on the server's event loop: handlers are ``async`` and never await while they
read or change it, so no request sees another one half done and no lock is needed.
"""

from __future__ import annotations

import asyncio

from airflow_provider_servicetitan.sandbox.clock import SandboxClock
from airflow_provider_servicetitan.sandbox.config import SandboxConfig
from airflow_provider_servicetitan.sandbox.credentials import SandboxCredential, app_key_for, derive_credentials
from airflow_provider_servicetitan.sandbox.faults import FaultInjector
from airflow_provider_servicetitan.sandbox.ratelimit import RateLimiter
from airflow_provider_servicetitan.sandbox.stats import Stats
from airflow_provider_servicetitan.sandbox.store import DataStore
from airflow_provider_servicetitan.sandbox.tokens import TokenRegistry


class SandboxState:
    """Config, credentials, clock, data, tokens, limits, faults and stats of one sandbox."""

    store: DataStore
    tokens: TokenRegistry
    api_limiter: RateLimiter
    token_limiter: RateLimiter
    faults: FaultInjector
    stats: Stats

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.app_key = app_key_for(config.seed)
        self.credentials = derive_credentials(config.seed, config.tenants)
        self._by_client_id = {credential.client_id: credential for credential in self.credentials}
        self.clock = SandboxClock(frozen=config.frozen_clock)
        self.stopping = asyncio.Event()
        """Set when the server stops: requests held by the timeout fault let go."""
        self.reset()

    def reset(self) -> None:
        """Data back to the seed, no tokens, stats zero, faults as at start, clock offset zero."""
        config = self.config
        self.clock.reset()
        self.store = DataStore(config.seed, [c.tenant_id for c in self.credentials], config.records)
        self.tokens = TokenRegistry()
        self.api_limiter = RateLimiter()
        self.token_limiter = RateLimiter()
        self.faults = FaultInjector(config.seed, config.faults, config.fault_overrides, self.clock.now())
        self.stats = Stats()

    def credential(self, client_id: str) -> SandboxCredential | None:
        """The credential whose client id is ``client_id``."""
        return self._by_client_id.get(client_id)

    def licensed(self, tenant_id: int, module: str) -> bool:
        """Whether ``tenant_id`` has licensed ``module``: not unlicensed by the config nor by the faults."""
        unlicensed = (self.config.unlicensed_modules, self.faults.config.unlicensed_modules)
        return all(module not in modules.get(tenant_id, ()) for modules in unlicensed)

    def rate_limit(self) -> int:
        """API calls per second per (app key, tenant): the fault override, else the configured one."""
        return self.faults.config.rate_limit or self.config.rate_limit
