"""Access tokens the sandbox has issued: JWT-shaped strings, looked up on every API call."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IssuedToken:
    """Who a token was issued to, and until when (sandbox clock, epoch seconds)."""

    tenant_id: int
    client_id: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt_part(claims: dict[str, Any]) -> str:
    return _b64(json.dumps(claims, separators=(",", ":")).encode())


class TokenRegistry:
    """Issues tokens, answers whether a token is valid now, revokes them all or a client's."""

    def __init__(self) -> None:
        self._tokens: dict[str, IssuedToken] = {}

    def issue(self, tenant_id: int, client_id: str, now: float, expires_in: int, scope: str) -> str:
        """A new token for ``client_id`` valid ``expires_in`` seconds; expired tokens are forgotten."""
        self._tokens = {token: issued for token, issued in self._tokens.items() if issued.expires_at > now}
        header = _jwt_part({"alg": "RS256", "typ": "at+jwt", "kid": "sandbox"})
        payload = _jwt_part(
            {
                "iss": "servicetitan-sandbox",
                "client_id": client_id,
                "tenant": str(tenant_id),
                "scope": scope,
                "iat": int(now),
                "exp": int(now) + expires_in,
                "jti": secrets.token_hex(16),
            }
        )
        token = f"{header}.{payload}.{_b64(secrets.token_bytes(64))}"
        self._tokens[token] = IssuedToken(tenant_id, client_id, now + expires_in)
        return token

    def lookup(self, token: str, now: float) -> IssuedToken | None:
        """The token's owner if it was issued here, is not revoked and has not expired."""
        issued = self._tokens.get(token)
        return issued if issued is not None and issued.expires_at > now else None

    def revoke_all(self) -> int:
        """Invalidate every token issued so far; returns how many were still held."""
        revoked = len(self._tokens)
        self._tokens = {}
        return revoked

    def revoke_client(self, client_id: str) -> int:
        """Invalidate every token issued to ``client_id``; returns how many were still held."""
        kept = {token: issued for token, issued in self._tokens.items() if issued.client_id != client_id}
        revoked = len(self._tokens) - len(kept)
        self._tokens = kept
        return revoked
