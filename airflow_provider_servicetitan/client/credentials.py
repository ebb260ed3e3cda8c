"""One ServiceTitan credential: who we are, for which tenant, against which environment.

Built from an Airflow connection by the hook, or directly by code that does not use Airflow.
Every field is validated here, offline and before anything else touches the value (Airflow's
secret masker included): the length cap first, so a 10 MB value costs nothing, then the field's
rules. An error names the field and what is expected; it echoes at most a short, escaped prefix of
a public field and never any part of the client secret or the app key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from airflow_provider_servicetitan.errors import CredentialValidationError

ENVIRONMENTS: dict[str, tuple[str, str]] = {
    "production": ("https://auth.servicetitan.io/connect/token", "https://api.servicetitan.io"),
    "integration": (
        "https://auth-integration.servicetitan.io/connect/token",
        "https://api-integration.servicetitan.io",
    ),
}

#: No connection field may be longer than this (characters); checked before anything else.
MAX_FIELD_CHARS = 4096
#: Tenant ids are int64 in ServiceTitan's API.
MAX_TENANT_ID = 2**63 - 1
#: How much of a rejected public value an error message shows.
PREVIEW_CHARS = 16

# Printable ASCII without space: what an HTTP header value or a URL can carry unescaped.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_ASCII_DIGITS = re.compile(r"[0-9]+")
# Control characters (C0, DEL, C1) and Unicode line/paragraph separators: never part of a secret.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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
        check = _FieldCheck(self.conn_id)
        check.public_token("client_id", self.client_id, "the connection's login, e.g. cid.xxxx")
        check.secret("client_secret", self.client_secret)
        check.secret("app_key", self.app_key, header_value=True)
        if isinstance(self.tenant_id, bool) or not isinstance(self.tenant_id, int):
            raise check.invalid("tenant_id", "an integer tenant id")
        if not 0 < self.tenant_id <= MAX_TENANT_ID:
            raise check.invalid("tenant_id", f"a tenant id between 1 and {MAX_TENANT_ID}")
        if self.environment not in ENVIRONMENTS:
            raise check.invalid("environment", f"one of {', '.join(sorted(ENVIRONMENTS))}")
        for name in ("auth_url", "api_url"):
            value = getattr(self, name)
            if value is not None:
                check.url(name, value)

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
        check = _FieldCheck(conn_id)
        return cls(
            client_id=check.text("client_id", client_id),
            client_secret=check.text("client_secret", client_secret),
            app_key=check.text("app_key", app_key),
            tenant_id=check.tenant_id(tenant_id),
            environment=(check.text("environment", environment) or "production").lower(),
            auth_url=check.text("auth_url", auth_url) or None,
            api_url=check.text("api_url", api_url) or None,
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
        """A keyed one-way fingerprint of the secrets (client secret and app key).

        An HMAC keyed by the client secret over the credential's identity and app key: it tells
        that either secret changed (a person fixed a rejected credential; a cached token belongs
        to other secrets) without revealing them, and cannot be checked against a guessed secret
        without also knowing the app key.
        """
        message = f"servicetitan-secrets|{self.cache_id}|{self.app_key}".encode()
        return hmac.new(self.client_secret.encode(), message, hashlib.sha256).hexdigest()[:32]

    def secrets(self) -> tuple[str, str]:
        """The values that must be masked wherever they could be printed."""
        return self.client_secret, self.app_key

    def redact(self, text: str, *also: str) -> str:
        """``text`` without the client secret, the app key and ``also`` (e.g. a token).

        For texts that come from elsewhere (a server's error detail, a transport error) before they
        go into an exception: each secret is replaced by ``***`` as written, escaped the way
        ``repr``/JSON escape it, and percent-encoded.
        """
        for secret in (*self.secrets(), *also):
            if not secret:
                continue
            for form in {secret, ascii(secret)[1:-1], repr(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}:
                if form:
                    text = text.replace(form, "***")
        return text


class _FieldCheck:
    """The validation rules of connection fields; every failure is a :class:`CredentialValidationError`."""

    def __init__(self, conn_id: str | None) -> None:
        self.conn_id = conn_id

    def invalid(self, name: str, expected: str) -> CredentialValidationError:
        return CredentialValidationError(name, expected, conn_id=self.conn_id)

    def text(self, name: str, value: Any) -> str:
        """A field as text, surrounding whitespace removed; ``None`` is empty. Length is checked first."""
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.invalid(name, f"text, got {_json_kind(value)}")
        self.length(name, value)
        return value.strip()

    def length(self, name: str, value: str) -> None:
        if len(value) > MAX_FIELD_CHARS:
            raise self.invalid(name, f"at most {MAX_FIELD_CHARS} characters, got {len(value)}")

    def public_token(self, name: str, value: Any, what: str) -> None:
        """A non-secret value sent to ServiceTitan: printable ASCII, no whitespace."""
        self._present(name, value, what)
        if not _HEADER_SAFE.fullmatch(value):
            raise self.invalid(name, f"{what}: printable ASCII without spaces, got {_preview(value)}")

    def secret(self, name: str, value: Any, *, header_value: bool = False) -> None:
        """A secret: never echoed. One sent as an HTTP header value must also be header-safe."""
        what = "the connection's password" if name == "client_secret" else "the ServiceTitan app key"
        self._present(name, value, what)
        if header_value and not _HEADER_SAFE.fullmatch(value):
            raise self.invalid(
                name, f"{what}: printable ASCII without spaces or line breaks (value not shown; it is secret)"
            )
        if _CONTROL.search(value):
            raise self.invalid(name, f"{what} without control characters (value not shown; it is secret)")

    def url(self, name: str, value: Any) -> None:
        self._present(name, value, "an http(s) URL")
        if not _HEADER_SAFE.fullmatch(value):
            raise self.invalid(name, "an http(s) URL of printable ASCII without spaces")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - parsing the port is the check: urlsplit raises on a bad one
        except ValueError:
            raise self.invalid(name, "an http(s) URL with a valid host and port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.invalid(name, "an http(s) URL with a host, e.g. https://api.servicetitan.io")
        if parts.username is not None or parts.password is not None:
            raise self.invalid(name, "an http(s) URL without user or password in it")

    def tenant_id(self, value: Any) -> int:
        """A positive int64 from an integer or from ASCII digits (never from other scripts' digits)."""
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if not isinstance(value, str):
            got = "nothing" if value is None else _json_kind(value)
            raise self.invalid("tenant_id", f"the numeric ServiceTitan tenant id (an integer or digits), got {got}")
        text = self.text("tenant_id", value)
        if not text:
            raise self.invalid("tenant_id", "the numeric ServiceTitan tenant id, got nothing")
        if not _ASCII_DIGITS.fullmatch(text):
            raise self.invalid("tenant_id", f"ASCII digits 0-9 only, got {_preview(text)}")
        if len(text.lstrip("0")) > len(str(MAX_TENANT_ID)):
            raise self.invalid("tenant_id", f"a tenant id between 1 and {MAX_TENANT_ID}")
        return int(text)

    def _present(self, name: str, value: Any, what: str) -> None:
        if not isinstance(value, str):
            raise self.invalid(name, f"{what} as text, got {_json_kind(value)}")
        self.length(name, value)
        if not value:
            raise self.invalid(name, f"{what}, got nothing")


def _preview(value: str) -> str:
    """A short, escaped prefix of a public value for an error message."""
    shown = ascii(value[:PREVIEW_CHARS])
    return shown + (f" (and {len(value) - PREVIEW_CHARS} more characters)" if len(value) > PREVIEW_CHARS else "")


def _json_kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", list: "a JSON list", dict: "a JSON object"}
    return next((kind for cls, kind in kinds.items() if isinstance(value, cls)), type(value).__name__)
