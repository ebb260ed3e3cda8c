"""Everything a running sandbox holds, and the way back to its start.

All of it lives on the server's event loop: handlers are ``async`` and never await while they
read or change it, so no request sees another one half done and no lock is needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

from airflow_provider_servicetitan.sandbox.clock import SandboxClock
from airflow_provider_servicetitan.sandbox.config import SandboxConfig
from airflow_provider_servicetitan.sandbox.credentials import (
    SandboxCredential,
    app_key_for,
    derive_credentials,
    rotated_secret,
)
from airflow_provider_servicetitan.sandbox.faults import FaultInjector
from airflow_provider_servicetitan.sandbox.holds import HeldRequests
from airflow_provider_servicetitan.sandbox.ratelimit import RateLimiter
from airflow_provider_servicetitan.sandbox.stats import Stats
from airflow_provider_servicetitan.sandbox.store import DataStore
from airflow_provider_servicetitan.sandbox.tokens import TokenRegistry


class SandboxState:
    """Config, credentials, clock, data, tokens, limits, faults and stats of one sandbox."""

    credentials: list[SandboxCredential]
    """One per tenant, with its current client secret (a rotation replaces the list)."""
    store: DataStore
    tokens: TokenRegistry
    api_limiter: RateLimiter
    token_limiter: RateLimiter
    faults: FaultInjector
    stats: Stats
    _rotations: Counter[int]
    """Rotations of each tenant's secret since start or reset."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.app_key = app_key_for(config.seed)
        self.clock = SandboxClock(frozen=config.frozen_clock)
        self.stopping = asyncio.Event()
        """Set when the server stops: requests held by the timeout fault or ``hold_after_pages`` let go."""
        self.held = HeldRequests()
        self.reset()

    def reset(self) -> None:
        """Data and client secrets back to the seed, no tokens, stats zero, faults as at start, clock offset zero."""
        config = self.config
        self.clock.reset()
        self._set_credentials(derive_credentials(config.seed, config.tenants))
        self._rotations = Counter()
        self.store = DataStore(config.seed, [c.tenant_id for c in self.credentials], config.records)
        self.tokens = TokenRegistry()
        self.api_limiter = RateLimiter()
        self.token_limiter = RateLimiter()
        self.faults = FaultInjector(config.seed, config.faults, config.fault_overrides, self.clock.now())
        self.stats = Stats()
        self.held.changed()

    def set_faults(self, profile: str | None, knobs: Mapping[str, Any]) -> None:
        """Apply ``profile`` and ``knobs`` (see :meth:`FaultInjector.apply`); held requests look again.

        :raises ValueError: unknown profile, unknown knob or invalid value.
        """
        self.faults.apply(profile, knobs, self.clock.now())
        self.held.changed()

    def credential(self, client_id: str) -> SandboxCredential | None:
        """The credential whose client id is ``client_id``."""
        return self._by_client_id.get(client_id)

    def rotate_secret(self, tenant_id: int, *, revoke_tokens: bool) -> tuple[SandboxCredential, int]:
        """Give ``tenant_id``'s client id a new client secret, as an app owner does in ServiceTitan:
        from now on the token endpoint refuses the old secret and accepts the new one.

        Tokens issued before stay valid until they expire, as on OAuth servers generally (a bearer
        token is checked on its own, not against the secret that obtained it), unless
        ``revoke_tokens``. The new secret comes from the seed and the number of rotations of the
        tenant since start or reset (:func:`rotated_secret`).

        :returns: the credential with its new secret, and how many of its tokens were revoked.
        :raises KeyError: no such tenant.
        """
        current = next((c for c in self.credentials if c.tenant_id == tenant_id), None)
        if current is None:
            raise KeyError(tenant_id)
        self._rotations[tenant_id] += 1
        secret = rotated_secret(self.config.seed, tenant_id, self._rotations[tenant_id])
        rotated = dataclasses.replace(current, client_secret=secret)
        self._set_credentials([rotated if c.tenant_id == tenant_id else c for c in self.credentials])
        revoked = self.tokens.revoke_client(rotated.client_id) if revoke_tokens else 0
        return rotated, revoked

    def _set_credentials(self, credentials: list[SandboxCredential]) -> None:
        """Replace the credentials at once: a reader in another thread sees the old list or the new."""
        self._by_client_id = {credential.client_id: credential for credential in credentials}
        self.credentials = credentials

    def licensed(self, tenant_id: int, module: str) -> bool:
        """Whether ``tenant_id`` has licensed ``module``: not unlicensed by the config nor by the faults."""
        unlicensed = (self.config.unlicensed_modules, self.faults.config.unlicensed_modules)
        return all(module not in modules.get(tenant_id, ()) for modules in unlicensed)

    def rate_limit(self) -> int:
        """API calls per second per (app key, tenant): the fault override, else the configured one."""
        return self.faults.config.rate_limit or self.config.rate_limit
