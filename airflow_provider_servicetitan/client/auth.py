"""Client-credentials tokens shared by every worker process of one credential.

ServiceTitan throttles its token endpoint and tokens live 900 s, so one token per credential is
cached and reused by everybody:

* in process memory (a warm worker makes no Redis call per request),
* in Redis, encrypted with Fernet, under a key derived from environment, token URL, tenant,
  client id and a keyed fingerprint of the client secret and app key (never the secrets
  themselves), expiring a safety margin before the token does.

A token is bound to the secrets that obtained it: a caller holding another secret (a rotated one,
or a wrong one typed into the connection) never sees it, in memory or in Redis, and goes to the
token endpoint itself, so a wrong secret is refused even while a good token is cached.

Renewal is single-flight across processes: whoever takes a short Redis lock asks ServiceTitan;
the others wait for its result, and take over if the holder dies (the lock has a TTL). A token
endpoint that rejects the credentials leaves a marker (a one-way fingerprint of the secret) so
that other processes fail at once instead of asking again; changing the secret clears it.

If Redis is unreachable the manager keeps working with the per-process cache, logs one warning,
and tries Redis again once per re-check interval.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import requests
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.errors import (
    InvalidCredentialsError,
    RateLimitExceededError,
    TokenRefreshError,
    error_from_exception,
    error_from_response,
)
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS, SharedRedis

log = logging.getLogger(__name__)

# Returned by ``TokenManager._shared`` when Redis was not used (an outage; a real answer may be None).
_REDIS_DOWN: Any = object()

# Compare-and-delete: only the value we expect is removed (a lock we own, a token that failed).
_DELETE_IF_FIELD_MATCHES = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_DELETE_IF_VALUE_MATCHES = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# What an access token may contain: printable ASCII without whitespace (JWTs are base64url and dots).
_HEADER_SAFE_TOKEN = re.compile(r"[\x21-\x7e]{1,16384}")


def token_cache_key(namespace: str, credentials: ServiceTitanCredentials) -> str:
    """The Redis key of a credential's shared token, bound to its secrets through their fingerprint.

    The renewal lock and the rejection marker live at ``<key>:lock`` and ``<key>:rejected``.
    """
    return f"{namespace}:token:{credentials.cache_id}:{credentials.secret_fingerprint}"


def token_fingerprint(token: str) -> str:
    """A one-way fingerprint of a token, to compare tokens without storing or logging them."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def fernet_from_secret(credentials: ServiceTitanCredentials) -> Fernet:
    """A Fernet key derived from the client secret: only holders of the secret can read the cache."""
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"airflow-provider-servicetitan:token-cache",
        info=credentials.cache_id.encode(),
    ).derive(credentials.client_secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


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


@dataclass(frozen=True)
class _Token:
    value: str
    valid_until: float  # local monotonic time after which the token must not be used


class TokenManager:
    """Obtains, caches, shares and renews the access token of one credential.

    :param credentials: the credential to authenticate.
    :param redis_client: shared cache (used through a fail-fast copy: short timeouts, no
        retries); ``None`` keeps the cache per process.
    :param session: HTTP session for the token endpoint.
    :param fernet: encrypts tokens in Redis; by default a key derived from the client secret.
    :param namespace: prefix of every Redis key.
    :param refresh_margin: renew this long before expiry (at most a fifth of the lifetime).
    :param lock_seconds: how long a renewer may hold the renewal lock before another takes over.
    :param wait_seconds: how long a waiter waits for another process's renewal before giving up.
    :param rejection_seconds: how long a rejected secret is remembered across processes.
    :param on_renew: called after each successful token request (metrics).
    :param on_token: called with every token that enters this process (e.g. to mask it in logs).
    :param redis_recheck_seconds: while Redis is unreachable, how often to try it again.
    """

    def __init__(
        self,
        credentials: ServiceTitanCredentials,
        redis_client: redis.Redis | None = None,
        *,
        session: requests.Session | None = None,
        fernet: Fernet | MultiFernet | None = None,
        namespace: str = "servicetitan",
        refresh_margin: float = 60.0,
        lock_seconds: float = 15.0,
        wait_seconds: float = 30.0,
        rejection_seconds: float = 300.0,
        timeout: tuple[float, float] = (5.0, 30.0),
        poll_interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_renew: Callable[[], None] | None = None,
        on_token: Callable[[str], None] | None = None,
        redis_recheck_seconds: float = DEFAULT_REDIS_RECHECK_SECONDS,
    ) -> None:
        self.credentials = credentials
        self._shared_redis = SharedRedis(
            redis_client,
            f"token cache of tenant {credentials.tenant_id}",
            degraded="tokens are cached per process",
            recheck_seconds=redis_recheck_seconds,
            clock=clock,
            log=log,
        )
        self._redis = self._shared_redis.client
        self._session = session or requests.Session()
        self._fernet = fernet or fernet_from_secret(credentials)
        self._refresh_margin = refresh_margin
        self._lock_ms = int(lock_seconds * 1000)
        self._wait_seconds = wait_seconds
        self._rejection_ms = int(rejection_seconds * 1000)
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._clock = clock
        self._sleep = sleep
        self._on_renew = on_renew
        self._on_token = on_token
        self._local: _Token | None = None
        self._local_lock = threading.Lock()
        base = token_cache_key(namespace, credentials)
        self._token_key = base
        self._lock_key = f"{base}:lock"
        self._rejected_key = f"{base}:rejected"
        self.token_requests = 0

    def get_token(self) -> str:
        """A valid access token: from memory, else from Redis, else renewed for everybody."""
        token = self._local
        if token is not None and self._clock() < token.valid_until:
            return token.value
        with self._local_lock:
            token = self._local
            if token is not None and self._clock() < token.valid_until:
                return token.value
            self._local = self._obtain()
            if self._on_token is not None:
                self._on_token(self._local.value)
            return self._local.value

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after ServiceTitan refused it, unless it was already replaced.

        Only the token that failed is dropped, locally and in Redis, so a burst of 401s from many
        workers causes one renewal, not one each.
        """
        with self._local_lock:
            if self._local is not None and self._local.value == token:
                self._local = None
        fingerprint = token_fingerprint(token)
        self._shared(lambda client: client.eval(_DELETE_IF_FIELD_MATCHES, 1, self._token_key, "fp", fingerprint))

    def _obtain(self) -> _Token:
        if self._redis is None:
            return self._request_token()
        deadline = self._clock() + self._wait_seconds
        owner = uuid.uuid4().hex
        while True:
            self._raise_if_rejected()
            cached = self._read_shared()
            if cached is not None:
                return cached
            acquired = self._shared(lambda client: client.set(self._lock_key, owner, nx=True, px=self._lock_ms))
            if acquired is _REDIS_DOWN:  # fall back to this process alone
                return self._request_token()
            if acquired:
                try:
                    return self._read_shared() or self._renew_shared()
                finally:
                    self._shared(lambda client: client.eval(_DELETE_IF_VALUE_MATCHES, 1, self._lock_key, owner))
            if self._clock() >= deadline:
                raise TokenRefreshError(
                    f"waited {self._wait_seconds:g}s for another worker to renew the token of "
                    f"tenant {self.credentials.tenant_id}; giving up for now"
                )
            self._sleep(self._poll_interval)

    def _renew_shared(self) -> _Token:
        try:
            value, expires_in = self._request_token_value()
        except InvalidCredentialsError:
            self._shared(
                lambda client: client.set(
                    self._rejected_key, self.credentials.secret_fingerprint, px=self._rejection_ms
                )
            )
            raise
        lifetime = self._lifetime(expires_in)
        ciphertext = self._fernet.encrypt(value.encode())

        def store(client: redis.Redis) -> None:
            with client.pipeline(transaction=True) as pipe:
                pipe.hset(self._token_key, mapping={"ct": ciphertext, "fp": token_fingerprint(value)})
                pipe.pexpire(self._token_key, int(lifetime * 1000))
                pipe.delete(self._rejected_key)
                pipe.execute()

        self._shared(store)
        return _Token(value, self._clock() + lifetime)

    def _read_shared(self) -> _Token | None:
        def read(client: redis.Redis) -> tuple[Any, Any]:
            with client.pipeline(transaction=True) as pipe:
                pipe.hget(self._token_key, "ct")
                pipe.pttl(self._token_key)
                ciphertext, pttl = pipe.execute()
            return ciphertext, pttl

        found = self._shared(read)
        if found is _REDIS_DOWN:
            return None
        ciphertext, pttl = found
        if ciphertext is None or pttl is None or pttl <= 0:
            return None
        try:
            value = self._fernet.decrypt(ciphertext).decode()
        except InvalidToken:
            # Written with another key (key rotation, a changed secret): treat as absent.
            return None
        return _Token(value, self._clock() + pttl / 1000)

    def _raise_if_rejected(self) -> None:
        marker = self._shared(lambda client: client.get(self._rejected_key))
        if isinstance(marker, bytes) and marker.decode() == self.credentials.secret_fingerprint:
            raise InvalidCredentialsError(
                f"ServiceTitan rejected the client id/secret of tenant {self.credentials.tenant_id} "
                "(remembered from an earlier attempt); fix the connection's credentials"
            )

    def _request_token(self) -> _Token:
        value, expires_in = self._request_token_value()
        return _Token(value, self._clock() + self._lifetime(expires_in))

    def _lifetime(self, expires_in: float) -> float:
        margin = min(self._refresh_margin, expires_in / 5)
        return max(expires_in - margin, 0.0)

    def _request_token_value(self) -> tuple[str, float]:
        """POST the client-credentials grant. Never logs or raises the secret or the token."""
        creds = self.credentials
        self.token_requests += 1
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
        if self._on_renew is not None:
            self._on_renew()
        return value, expires_in

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

    def _shared(self, operation: Callable[[redis.Redis], Any]) -> Any:
        """Run a Redis operation, or return ``_REDIS_DOWN`` without Redis, during an outage (see
        :class:`SharedRedis`: one warning per outage, one try per re-check interval)."""
        return self._shared_redis.run(operation, lambda: _REDIS_DOWN)
