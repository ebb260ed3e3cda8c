"""One ServiceTitan credential: who we are, for which tenant, against which environment.

Built from an Airflow connection by the hook, or directly by code that does not use Airflow.
Validation happens here, before any network call, and names the field that is wrong.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from airflow_provider_servicetitan.errors import CredentialValidationError

ENVIRONMENTS: dict[str, tuple[str, str]] = {
    "production": ("https://auth.servicetitan.io/connect/token", "https://api.servicetitan.io"),
    "integration": (
        "https://auth-integration.servicetitan.io/connect/token",
        "https://api-integration.servicetitan.io",
    ),
}


@dataclass(frozen=True)
class ServiceTitanCredentials:
    """A validated credential. Secrets are kept out of ``repr``."""

    client_id: str
    client_secret: str = field(repr=False)
    app_key: str = field(repr=False)
    tenant_id: int
    environment: str = "production"
    auth_url: str | None = None
    api_url: str | None = None
    conn_id: str | None = None

    def __post_init__(self) -> None:
        def invalid(name: str, expected: str) -> CredentialValidationError:
            return CredentialValidationError(name, expected, conn_id=self.conn_id)

        if not isinstance(self.client_id, str) or not self.client_id.strip():
            raise invalid("client_id", "a non-empty client id (the connection's login)")
        if not isinstance(self.client_secret, str) or not self.client_secret.strip():
            raise invalid("client_secret", "a non-empty client secret (the connection's password)")
        if not isinstance(self.app_key, str) or not self.app_key.strip():
            raise invalid("app_key", "a non-empty ServiceTitan app key")
        if isinstance(self.tenant_id, bool) or not isinstance(self.tenant_id, int) or self.tenant_id <= 0:
            raise invalid("tenant_id", "a positive integer tenant id")
        if self.environment not in ENVIRONMENTS:
            raise invalid("environment", f"one of {', '.join(sorted(ENVIRONMENTS))}")
        for name in ("auth_url", "api_url"):
            url = getattr(self, name)
            if url is not None and urlparse(url).scheme not in ("http", "https"):
                raise invalid(name, "an http(s) URL or nothing")

    @classmethod
    def from_fields(
        cls,
        *,
        client_id: Any,
        client_secret: Any,
        app_key: Any,
        tenant_id: Any,
        environment: Any = None,
        auth_url: Any = None,
        api_url: Any = None,
        conn_id: str | None = None,
    ) -> ServiceTitanCredentials:
        """Build from loosely typed values (connection fields), converting and checking each one."""
        return cls(
            client_id=_text(client_id),
            client_secret=_text(client_secret),
            app_key=_text(app_key),
            tenant_id=_tenant_id(tenant_id, conn_id),
            environment=(_text(environment) or "production").lower(),
            auth_url=_text(auth_url) or None,
            api_url=_text(api_url) or None,
            conn_id=conn_id,
        )

    @property
    def token_url(self) -> str:
        return self.auth_url or ENVIRONMENTS[self.environment][0]

    @property
    def base_url(self) -> str:
        return (self.api_url or ENVIRONMENTS[self.environment][1]).rstrip("/")

    @property
    def cache_id(self) -> str:
        """Stable, non-secret identity of this credential: environment, token URL, tenant, client id."""
        raw = f"{self.environment}|{self.token_url}|{self.tenant_id}|{self.client_id}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    @property
    def secret_fingerprint(self) -> str:
        """A one-way fingerprint of the secrets (client secret and app key): tells that either
        changed, e.g. that a person fixed a rejected credential, without revealing them."""
        return hashlib.sha256(f"{self.cache_id}|{self.client_secret}|{self.app_key}".encode()).hexdigest()[:16]

    def secrets(self) -> tuple[str, str]:
        """The values that must be masked wherever they could be printed."""
        return self.client_secret, self.app_key


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _tenant_id(value: Any, conn_id: str | None) -> int:
    text = _text(value)
    if isinstance(value, bool) or not text.isdigit():
        shown = f"{text!r}" if text else "nothing"
        raise CredentialValidationError("tenant_id", f"a positive integer tenant id, got {shown}", conn_id=conn_id)
    return int(text)
