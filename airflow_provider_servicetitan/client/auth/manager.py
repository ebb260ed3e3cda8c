"""TokenManager: the access token of one credential, cached per process and shared by every worker.

ServiceTitan throttles its token endpoint and tokens live 900 s, so one token per credential is
cached and reused by everybody: in process memory (a warm worker makes no Redis call per request),
and in the shared encrypted cache in Redis (:mod:`.cache`).

A token is bound to the secrets that obtained it: a caller holding another secret (a rotated one,
or a wrong one typed into the connection) never sees it, in memory or in Redis, and goes to the
token endpoint itself, so a wrong secret is refused even while a good token is cached.

Renewal is single-flight across processes: whoever takes a short Redis lock asks ServiceTitan;
the others wait for its result, and take over if the holder dies (the lock has a TTL). A token
endpoint that rejects the credentials leaves a marker so that other processes fail at once instead
of asking again; changing the secret clears it.

If Redis is unreachable the manager keeps working with the per-process cache, logs one warning,
and tries Redis again once per re-check interval.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis
import requests
from cryptography.fernet import Fernet, MultiFernet

from airflow_provider_servicetitan.client.auth.cache import SharedTokenCache
from airflow_provider_servicetitan.client.auth.endpoint import (
    DEFAULT_TOKEN_RATE_LIMIT_PER_SECOND,
    TokenEndpoint,
    token_rate_limiter,
)
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.errors import InvalidCredentialsError, TokenRefreshError
from airflow_provider_servicetitan.resilience.ratelimit import RateLimiter
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS


@dataclass(frozen=True)
class _Token:
    value: str
    valid_until: float  # local monotonic time after which the token must not be used


class TokenManager:
    """Obtains, caches, shares and renews the access token of one credential.

    :meth:`close` closes its HTTP session (:meth:`ServiceTitanClient.close` calls it).

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
    :param token_rate_limit_per_second: token requests per second of this client id across all
        workers (shared in Redis; per process without it); ``None``: not paced.
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
        token_rate_limit_per_second: float | None = DEFAULT_TOKEN_RATE_LIMIT_PER_SECOND,
    ) -> None:
        self.credentials = credentials
        self._cache = SharedTokenCache(
            credentials,
            redis_client,
            fernet=fernet,
            namespace=namespace,
            lock_seconds=lock_seconds,
            rejection_seconds=rejection_seconds,
            redis_recheck_seconds=redis_recheck_seconds,
            clock=clock,
        )
        limiter = (
            None
            if token_rate_limit_per_second is None
            else token_rate_limiter(
                credentials,
                self._cache.shared_redis,
                rate_per_second=token_rate_limit_per_second,
                namespace=namespace,
                redis_recheck_seconds=redis_recheck_seconds,
                sleep=sleep,
            )
        )
        self._endpoint = TokenEndpoint(credentials, session=session, timeout=timeout, rate_limiter=limiter)
        self._refresh_margin = refresh_margin
        self._wait_seconds = wait_seconds
        self._poll_interval = poll_interval
        self._clock = clock
        self._sleep = sleep
        self._on_renew = on_renew
        self._on_token = on_token
        self._local: _Token | None = None
        self._local_lock = threading.Lock()

    @property
    def rate_limiter(self) -> RateLimiter | None:
        """The limiter pacing this client id's token requests (``None``: not paced)."""
        return self._endpoint.rate_limiter

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
        self._cache.forget(token)

    def close(self) -> None:
        """Close the HTTP session of the token endpoint."""
        self._endpoint.close()

    def _obtain(self) -> _Token:
        if not self._cache.shared:
            return self._request_token()
        deadline = self._clock() + self._wait_seconds
        owner = uuid.uuid4().hex
        while True:
            self._raise_if_rejected()
            cached = self._read_shared()
            if cached is not None:
                return cached
            acquired = self._cache.try_lock(owner)
            if acquired is None:  # Redis unreachable: fall back to this process alone
                return self._request_token()
            if acquired:
                try:
                    return self._read_shared() or self._renew_shared()
                finally:
                    self._cache.unlock(owner)
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
            self._cache.mark_rejected()
            raise
        lifetime = self._lifetime(expires_in)
        self._cache.store(value, lifetime)
        return _Token(value, self._clock() + lifetime)

    def _read_shared(self) -> _Token | None:
        found = self._cache.read()
        if found is None:
            return None
        value, seconds_left = found
        return _Token(value, self._clock() + seconds_left)

    def _raise_if_rejected(self) -> None:
        if self._cache.rejected():
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
        value, expires_in = self._endpoint.request_token()
        if self._on_renew is not None:
            self._on_renew()
        return value, expires_in
