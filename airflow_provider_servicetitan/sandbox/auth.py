"""The identity side of the sandbox: the token endpoint, and the checks every API call passes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_servicetitan.sandbox.faults import FaultKind
from airflow_provider_servicetitan.sandbox.licensing import MODULES
from airflow_provider_servicetitan.sandbox.problems import ProblemError
from airflow_provider_servicetitan.sandbox.state import SandboxState

_TOKEN_PERIOD = 60.0
_API_PERIOD = 1.0


def issue_token(state: SandboxState, form: Mapping[str, str]) -> dict[str, Any]:
    """Answer a client-credentials token request.

    Order of checks: injected token-endpoint fault (5xx), throttle per client id (429), grant type
    (400 ``unsupported_grant_type``), client id and secret (400 ``invalid_client``).
    """
    client_id = form.get("client_id", "")
    credential = state.credential(client_id)
    status = state.faults.token_error(None if credential is None else credential.tenant_id)
    if status is not None:
        state.stats.fault(FaultKind.TOKEN_ERROR)
        raise ProblemError(status)
    now = state.clock.now()
    retry_after = state.token_limiter.acquire(client_id, state.config.token_rate_limit, _TOKEN_PERIOD, now)
    if retry_after is not None:
        raise ProblemError(429, "Too many token requests", retry_after=retry_after)
    if form.get("grant_type") != "client_credentials":
        raise ProblemError(
            400,
            "Unsupported grant type",
            errors={"grant_type": ["Only client_credentials is supported."]},
            extra={"error": "unsupported_grant_type"},
        )
    if credential is None or form.get("client_secret") != credential.client_secret:
        raise ProblemError(400, "Invalid client", extra={"error": "invalid_client"})
    config = state.config
    scope = " ".join(sorted(module for module in MODULES if state.licensed(credential.tenant_id, module)))
    token = state.tokens.issue(credential.tenant_id, client_id, now, config.token_expires_in, scope)
    state.stats.token_issued()
    return {
        "access_token": token,
        "expires_in": config.token_expires_in,
        "token_type": "Bearer",
        "scope": scope,
    }


def _bearer(authorization: str | None) -> str | None:
    value = (authorization or "").strip()
    scheme, _, rest = value.partition(" ")
    token = rest.strip() if scheme.lower() == "bearer" else value
    return token or None


def authorize(state: SandboxState, authorization: str | None, app_key: str | None, tenant_id: int, module: str) -> None:
    """Let an API call through or raise: 401 (app key, token), 403 (module not licensed), 429 (rate limit).

    The token may come as ``Bearer <token>`` or bare.
    """
    now = state.clock.now()
    if app_key is None or app_key != state.app_key:
        raise ProblemError(401, detail="The ST-App-Key header is missing or not a valid application key.")
    token = _bearer(authorization)
    if token is None:
        raise ProblemError(401, detail="The Authorization header is missing.")
    issued = state.tokens.lookup(token, now)
    if issued is None:
        raise ProblemError(401, detail="The access token is invalid, expired or revoked.")
    if issued.tenant_id != tenant_id:
        raise ProblemError(401, detail=f"The access token is not valid for tenant {tenant_id}.")
    if not state.licensed(tenant_id, module):
        raise ProblemError(403, detail=f"Tenant {tenant_id} has not licensed the {module!r} module.")
    retry_after = state.api_limiter.acquire((app_key, tenant_id), state.rate_limit(), _API_PERIOD, now)
    if retry_after is not None:
        raise ProblemError(429, detail="Rate limit exceeded for this application and tenant.", retry_after=retry_after)
