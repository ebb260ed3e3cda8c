"""Small helpers shared by tests."""

from __future__ import annotations

from typing import Any

from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.sandbox import SandboxCredential, SandboxServer


def credentials_for(sandbox: SandboxServer, index: int = 0, **changes: Any) -> ServiceTitanCredentials:
    cred: SandboxCredential = sandbox.credentials[index]
    fields: dict[str, Any] = {
        "client_id": cred.client_id,
        "client_secret": cred.client_secret,
        "app_key": cred.app_key,
        "tenant_id": cred.tenant_id,
        "environment": "integration",
        "auth_url": sandbox.token_url,
        "api_url": sandbox.base_url,
        **changes,
    }
    return ServiceTitanCredentials(**fields)
