"""The client-credentials grant: one POST to ServiceTitan's token endpoint, and its answer.

Nothing here caches or shares a token (see :mod:`.cache` and :mod:`.manager`). What it
guarantees is hygiene: neither the client secret nor a token reaches a log line or an exception
message, and no ``requests`` exception (whose text may quote what was sent) rides along as an
error's cause or context.

ServiceTitan throttles the token endpoint without publishing a number: every request first takes
a slot from the client id's own limiter (:func:`token_rate_limiter`, by default one request per
second across all workers), and a 429 pauses that limiter for its ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import requests

from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.errors import (
    InvalidCredentialsError,
    RateLimitExceededError,
    TokenRefreshError,
    error_from_exception,
    error_from_response,
)
from airflow_provider_servicetitan.resilience.ratelimit import RateLimiter, RateLimitWaitTooLong
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS

# One logger for the whole token component (endpoint, cache, manager), named after the package.
log = logging.getLogger(__package__)

#: Token requests per second per client id across all workers (ServiceTitan publishes no number).
DEFAULT_TOKEN_RATE_LIMIT_PER_SECOND = 1.0
#: The longest wait for a token-endpoint slot before giving up with a 429 of our own (seconds).
MAX_TOKEN_RATE_LIMIT_WAIT = 10.0
#: The pause of the token limiter after a 429 that says nothing of when to come back (seconds).
_DEFAULT_TOKEN_PAUSE = 5.0

# What an access token may contain: printable ASCII without whitespace (JWTs are base64url and dots).
_HEADER_SAFE_TOKEN = re.compile(r"[\x21-\x7e]{1,16384}")


def token_rate_limiter(
    credentials: ServiceTitanCredentials,
    redis_client: Any,
    *,
    rate_per_second: float = DEFAULT_TOKEN_RATE_LIMIT_PER_SECOND,
    namespace: str = "servicetitan",
    redis_recheck_seconds: float = DEFAULT_REDIS_RECHECK_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> RateLimiter:
    """The shared limiter of a client id's token requests: ``rate_per_second`` exactly (no margin:
    this is our own choice, not a server's number), no burst. The client id is hashed in the key.
    ``redis_client``: a client, the token cache's :class:`SharedRedis` (one outage state for both),
    or ``None``."""
    digest = hashlib.sha256(f"{credentials.token_url}|{credentials.client_id}".encode()).hexdigest()[:16]
    return RateLimiter(
        f"token:{digest}",
        redis_client,
        rate_per_second=rate_per_second,
        burst=1,
        safety_margin=0.0,
        namespace=namespace,
        redis_recheck_seconds=redis_recheck_seconds,
        sleep=sleep,
    )


class TokenEndpoint:
    """Asks ServiceTitan for a new access token of one credential.

    :param credentials: the credential whose client id and secret are sent.
    :param session: HTTP session for the token endpoint (closed by :meth:`close`).
    :param timeout: (connect, read) timeouts in seconds.
    :param rate_limiter: paces the token requests of this client id (see :func:`token_rate_limiter`);
        ``None``: not paced.
    """

    def __init__(
        self,
        credentials: ServiceTitanCredentials,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.credentials = credentials
        self._session = session or requests.Session()
        self._timeout = timeout
        self.rate_limiter = rate_limiter

    def request_token(self) -> tuple[str, float]:
        """A new access token and its lifetime in seconds. Never logs or raises the secret or the token.

        :raises InvalidCredentialsError: ServiceTitan refused the client id or secret (400/401/403).
        :raises RateLimitExceededError: the token endpoint is throttling (with its ``Retry-After``),
            or our own limiter has no slot within ``MAX_TOKEN_RATE_LIMIT_WAIT`` (nothing was sent).
        :raises TokenRefreshError: any other failure (transport, 5xx, an unusable answer).
        """
        creds = self.credentials
        self._take_slot()
        response = self._post_grant()
        if response.status_code in (400, 401, 403):
            error = error_from_response(response)
            raise InvalidCredentialsError(
                creds.redact(f"ServiceTitan rejected the client id/secret of tenant {creds.tenant_id}: {error}"),
                status=error.status,
                title=error.title and creds.redact(error.title),
                trace_id=error.trace_id,
            )
        if response.status_code != 200:
            error = error_from_response(response)
            if isinstance(error, RateLimitExceededError):
                if self.rate_limiter is not None:
                    self.rate_limiter.pause(
                        error.retry_after if error.retry_after is not None else _DEFAULT_TOKEN_PAUSE
                    )
                raise RateLimitExceededError(
                    creds.redact(str(error)),
                    retry_after=error.retry_after,
                    status=error.status,
                    trace_id=error.trace_id,
                )
            raise TokenRefreshError(
                creds.redact(f"token endpoint failed: {error}"),
                status=error.status,
                title=error.title and creds.redact(error.title),
                trace_id=error.trace_id,
            )
        value, expires_in = _token_from(response)
        log.info("Obtained a new ServiceTitan token for tenant %s (expires in %gs)", creds.tenant_id, expires_in)
        return value, expires_in

    def _take_slot(self) -> None:
        limiter = self.rate_limiter
        if limiter is None:
            return
        try:
            limiter.acquire(max_wait=MAX_TOKEN_RATE_LIMIT_WAIT)
        except RateLimitWaitTooLong as far:
            raise RateLimitExceededError(
                f"token requests of tenant {self.credentials.tenant_id} are paused for {far.retry_after:.1f}s "
                "more (the token endpoint answered 429); not sent",
                retry_after=far.retry_after,
            ) from None

    def close(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        self._session.close()

    def _post_grant(self) -> requests.Response:
        """The token request. A transport failure is raised outside the ``except`` block, so that
        no ``requests`` exception (whose text may quote what was sent) rides along as context."""
        creds = self.credentials
        failure: TokenRefreshError | None = None
        try:
            return self._session.post(
                creds.token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": creds.client_id,
                    "client_secret": creds.client_secret,
                },
                headers={"Accept": "application/json"},
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            failure = TokenRefreshError(creds.redact(f"token request failed: {error_from_exception(exc)}"))
        raise failure


def _token_from(response: requests.Response) -> tuple[str, float]:
    """The access token and its lifetime from a 200 answer of the token endpoint.

    A token that could not travel in an HTTP header (whitespace, line breaks, non-ASCII) is refused
    here, without showing it: sending it would fail inside ``requests`` with the value in the message.
    """
    try:
        body = response.json()
        value = body["access_token"]
        expires_in = float(body.get("expires_in", 900))
    except (ValueError, KeyError, TypeError, AttributeError):
        body = None
    if body is None or not isinstance(value, str) or not _HEADER_SAFE_TOKEN.fullmatch(value):
        raise TokenRefreshError("token endpoint answered 200 without a usable access_token (value not shown)")
    if not math.isfinite(expires_in) or expires_in <= 0:
        raise TokenRefreshError(f"token endpoint answered an unusable expires_in ({expires_in!r})")
    return value, expires_in
