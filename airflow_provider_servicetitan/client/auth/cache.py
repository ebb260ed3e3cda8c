"""The token cache every worker of one credential shares, in Redis, encrypted.

The token lives in a hash ``{"ct": Fernet ciphertext, "fp": token fingerprint}`` under a key
derived from environment, token URL, tenant, client id and a keyed fingerprint of the client
secret and app key (never the secrets themselves), expiring a safety margin before the token does.
Next to it live the renewal lock (``<key>:lock``, one renewer at a time across processes) and the
rejection marker (``<key>:rejected``: the secret of that fingerprint was refused by the token endpoint).

Redis is used through :class:`SharedRedis`: while it is unreachable every method answers as if
the cache were empty (and :meth:`SharedTokenCache.try_lock` says so), one warning is logged per
outage, and Redis is tried again once per re-check interval.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import redis
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS, SharedRedis

# One logger for the whole token component (endpoint, cache, manager), named after the package.
log = logging.getLogger(__package__)

# Returned by ``SharedTokenCache._shared`` when Redis was not used (an outage; a real answer may be None).
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


class SharedTokenCache:
    """The shared token, renewal lock and rejection marker of one credential in Redis.

    :param credentials: the credential; its secret fingerprint is part of every key.
    :param redis_client: the Redis to share through, or ``None`` (then :attr:`shared` is false and
        nothing is stored).
    :param fernet: encrypts tokens; by default a key derived from the client secret.
    :param namespace: prefix of every Redis key.
    :param lock_seconds: how long a renewer may hold the renewal lock before another takes over.
    :param rejection_seconds: how long a rejected secret is remembered across processes.
    :param redis_recheck_seconds: while Redis is unreachable, how often to try it again.
    :param clock: monotonic seconds, for the re-check interval.
    """

    def __init__(
        self,
        credentials: ServiceTitanCredentials,
        redis_client: redis.Redis | None,
        *,
        fernet: Fernet | MultiFernet | None = None,
        namespace: str = "servicetitan",
        lock_seconds: float = 15.0,
        rejection_seconds: float = 300.0,
        redis_recheck_seconds: float = DEFAULT_REDIS_RECHECK_SECONDS,
        clock: Callable[[], float],
    ) -> None:
        self._redis = SharedRedis(
            redis_client,
            f"token cache of tenant {credentials.tenant_id}",
            degraded="tokens are cached per process (and token requests paced per process)",
            recheck_seconds=redis_recheck_seconds,
            clock=clock,
            log=log,
        )
        self._fernet = fernet or fernet_from_secret(credentials)
        self._lock_ms = int(lock_seconds * 1000)
        self._rejection_ms = int(rejection_seconds * 1000)
        base = token_cache_key(namespace, credentials)
        self._token_key = base
        self._lock_key = f"{base}:lock"
        self._rejected_key = f"{base}:rejected"

    @property
    def shared_redis(self) -> SharedRedis[redis.Redis]:
        """The Redis of the cache and its outage state (the token rate limiter uses it too)."""
        return self._redis

    @property
    def shared(self) -> bool:
        """Whether a Redis was given (it may still be unreachable right now)."""
        return self._redis.client is not None

    def read(self) -> tuple[str, float] | None:
        """The shared token and the seconds it may still be used, or ``None`` (absent, expired,
        encrypted with another key, or Redis unreachable)."""

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
        return value, pttl / 1000

    def store(self, value: str, lifetime: float) -> None:
        """Share ``value`` for ``lifetime`` seconds, and forget that the secret was ever rejected."""
        ciphertext = self._fernet.encrypt(value.encode())

        def store(client: redis.Redis) -> None:
            with client.pipeline(transaction=True) as pipe:
                pipe.hset(self._token_key, mapping={"ct": ciphertext, "fp": token_fingerprint(value)})
                pipe.pexpire(self._token_key, int(lifetime * 1000))
                pipe.delete(self._rejected_key)
                pipe.execute()

        self._shared(store)

    def forget(self, token: str) -> None:
        """Drop the shared token if it is still ``token`` (not if another worker replaced it)."""
        fingerprint = token_fingerprint(token)
        self._shared(lambda client: client.eval(_DELETE_IF_FIELD_MATCHES, 1, self._token_key, "fp", fingerprint))

    def try_lock(self, owner: str) -> bool | None:
        """Take the renewal lock for ``owner``: ``True`` if taken, ``False`` if another holds it,
        ``None`` if Redis is unreachable (then nobody can coordinate: renew alone)."""
        acquired = self._shared(lambda client: client.set(self._lock_key, owner, nx=True, px=self._lock_ms))
        return None if acquired is _REDIS_DOWN else bool(acquired)

    def unlock(self, owner: str) -> None:
        """Release the renewal lock if ``owner`` still holds it."""
        self._shared(lambda client: client.eval(_DELETE_IF_VALUE_MATCHES, 1, self._lock_key, owner))

    def mark_rejected(self) -> None:
        """Remember, for every worker, that the token endpoint refused this secret."""
        self._shared(lambda client: client.set(self._rejected_key, 1, px=self._rejection_ms))

    def rejected(self) -> bool:
        """Whether a worker found this very secret refused within the rejection period (the key
        carries the secret's fingerprint, so another secret has another marker)."""
        found = self._shared(lambda client: client.exists(self._rejected_key))
        return found is not _REDIS_DOWN and bool(found)

    def _shared(self, operation: Callable[[redis.Redis], Any]) -> Any:
        """Run a Redis operation, or return ``_REDIS_DOWN`` without Redis, during an outage (see
        :class:`SharedRedis`: one warning per outage, one try per re-check interval)."""
        return self._redis.run(operation, lambda: _REDIS_DOWN)
