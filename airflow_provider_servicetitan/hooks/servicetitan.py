"""Airflow hook: turns a ``servicetitan`` connection into a resilient :class:`ServiceTitanClient`.

The connection holds the credential (login = client id, password = client secret, fields
``app_key``, ``tenant_id``, ``environment``, optional ``auth_url`` / ``api_url``) and may tune
resilience in its extra: ``{"retry": {"preset": "aggressive", "max_attempts": 4},
"breaker": {"failure_threshold": 5, "open_seconds": 30}}``, and pace its calls with the fields
``rate_limit_per_second`` (API calls per second per app key and tenant, shared by every worker;
default 60, ServiceTitan's limit) and ``token_rate_limit_per_second`` (token requests per second
per client id; default 1). Arguments given in code win.
Shared state (tokens, breaker) lives in the Redis of an Airflow ``redis`` connection; which one,
and the namespace of its keys, default to the ``[servicetitan]`` config section (see
:mod:`~airflow_provider_servicetitan.hooks.settings`), so the connection form's Test button and
the DAG's tasks share the same tokens and breakers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

import redis
from airflow.sdk import BaseHook, Connection
from airflow.sdk.log import mask_secret
from cryptography.fernet import Fernet, MultiFernet

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.client.auth.endpoint import DEFAULT_TOKEN_RATE_LIMIT_PER_SECOND
from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.client.client import (
    DEFAULT_RATE_LIMIT_PER_SECOND,
    ServiceTitanClient,
    api_rate_limiter,
)
from airflow_provider_servicetitan.client.credentials import PREVIEW_CHARS, ServiceTitanCredentials
from airflow_provider_servicetitan.errors import CredentialValidationError, ServiceTitanError
from airflow_provider_servicetitan.get_provider_info import CONNECTION_TYPE
from airflow_provider_servicetitan.hooks import settings
from airflow_provider_servicetitan.hooks.redis import redis_from_connection
from airflow_provider_servicetitan.metrics import MetricsListener
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker
from airflow_provider_servicetitan.resilience.retry import PRESETS as RETRY_PRESETS
from airflow_provider_servicetitan.resilience.retry import RetryEvent, RetryPolicy

log = logging.getLogger(__name__)

_BREAKER_TUNABLES = frozenset(
    f.name for f in dataclasses.fields(BreakerConfig) if f.type in ("int", "float", "int | None", int, float)
)
_RETRY_TUNABLES = frozenset({"max_attempts", "base_delay", "max_delay", "max_elapsed", "rate_limit_budget"})
# Rate limits accepted from a connection field: a positive number of requests per second, at most this.
_MAX_RATE_PER_SECOND = 100_000.0


def breaker_name(credentials: ServiceTitanCredentials) -> str:
    """The name of a credential's circuit breaker (its Redis keys derive from it): one per tenant
    and credential, without a secret in it."""
    return f"tenant-{credentials.tenant_id}-{credentials.cache_id[:8]}"


class ServiceTitanHook(BaseHook):
    """Interact with ServiceTitan through a ``servicetitan`` connection.

    :param servicetitan_conn_id: the ServiceTitan connection (one credential = one tenant).
    :param redis_conn_id: Airflow Redis connection for the shared token cache and circuit breaker;
        ``None`` keeps both per process. Default: ``[servicetitan] redis_conn_id`` (``redis_default``).
    :param retry_policy: overrides the retry settings of the connection.
    :param breaker_config: overrides the circuit breaker settings of the connection.
    :param namespace: prefix of every Redis key. Default: ``[servicetitan] redis_namespace``
        (``servicetitan``); a configured one that is not valid raises ``ValueError`` naming the setting.
    :param token_encryption_key: Fernet key(s), comma-separated, for tokens in Redis. Default: the
        Airflow ``[core] fernet_key``, else a key derived from the client secret.
    :param timeout: (connect, read) timeouts of API calls, in seconds.
    :param retry_listener: called before each retry of an API call (metrics, sync log counts).
    :param max_retry_after: a wait ServiceTitan or the breaker asks for that is longer than this
        ends the call's retries at once (``RetryPolicy.max_retry_after``), so that an operator can
        defer instead of sleeping in a worker; ``None``: waits within the retry budget.
    :param rate_limit_per_second: overrides the connection's ``rate_limit_per_second``.
    :param token_rate_limit_per_second: overrides the connection's ``token_rate_limit_per_second``.
    """

    conn_name_attr = "servicetitan_conn_id"
    default_conn_name = "servicetitan_default"
    conn_type = CONNECTION_TYPE
    hook_name = "ServiceTitan"

    def __init__(
        self,
        servicetitan_conn_id: str = default_conn_name,
        redis_conn_id: str | settings.FromConfig | None = settings.FROM_CONFIG,
        *,
        retry_policy: RetryPolicy | None = None,
        breaker_config: BreakerConfig | None = None,
        namespace: str | None = None,
        token_encryption_key: str | None = None,
        timeout: tuple[float, float] = (5.0, 60.0),
        retry_listener: Callable[[RetryEvent], None] | None = None,
        max_retry_after: float | None = None,
        rate_limit_per_second: float | None = None,
        token_rate_limit_per_second: float | None = None,
    ) -> None:
        super().__init__()
        self.servicetitan_conn_id = servicetitan_conn_id
        self.redis_conn_id = settings.redis_conn_id(redis_conn_id)
        self._retry_policy = retry_policy
        self._breaker_config = breaker_config
        self.namespace = settings.redis_namespace(namespace)
        self._token_encryption_key = token_encryption_key
        self.timeout = timeout
        self._retry_listener = retry_listener
        self._max_retry_after = max_retry_after
        self._rate_limit_per_second = rate_limit_per_second
        self._token_rate_limit_per_second = token_rate_limit_per_second

    @cached_property
    def _connection(self) -> Connection:
        """The connection, fetched once per hook."""
        return self.get_connection(self.servicetitan_conn_id)

    @cached_property
    def _extra(self) -> dict[str, Any]:
        """The connection extra, parsed here rather than by ``extra_dejson`` so that a bad one is
        refused by name (Airflow would log it and use ``{}``) and nothing is masked before it is valid.
        Its fields are length-capped one by one, so that an error names the field that is too long."""
        raw = self._connection.extra
        if not raw:
            return {}
        try:
            extra = json.loads(raw)
        except ValueError:
            raise self._invalid("extra", "a JSON object (the text is not valid JSON)") from None
        if not isinstance(extra, dict):
            raise self._invalid("extra", f"a JSON object, got {type(extra).__name__}")
        return extra

    def get_credentials(self) -> ServiceTitanCredentials:
        """Read and validate the connection's credential (once per hook), then mask its secrets in every log."""
        return self._credentials

    @cached_property
    def _credentials(self) -> ServiceTitanCredentials:
        conn = self._connection
        extra = self._extra

        credentials = ServiceTitanCredentials.from_fields(
            client_id=conn.login,
            client_secret=conn.password,
            app_key=extra.get("app_key"),
            tenant_id=extra.get("tenant_id"),
            environment=extra.get("environment"),
            auth_url=extra.get("auth_url"),
            api_url=extra.get("api_url"),
            conn_id=self.servicetitan_conn_id,
        )
        for secret in credentials.secrets():
            mask_secret(secret)
        return credentials

    def get_retry_policy(self) -> RetryPolicy:
        """The retry policy: the one given in code, else the connection's ``retry`` settings."""
        if self._retry_policy is not None:
            return self._retry_policy
        settings = self._settings("retry", _RETRY_TUNABLES | {"preset"})
        preset = settings.pop("preset", "default")
        if not isinstance(preset, str) or preset.strip().lower() not in RETRY_PRESETS:
            raise self._invalid("extra.retry.preset", f"one of {', '.join(sorted(RETRY_PRESETS))}")
        try:
            return RetryPolicy.preset(preset, **settings)
        except ValueError as exc:
            raise self._invalid("extra.retry", _short(str(exc))) from None

    def get_breaker_config(self) -> BreakerConfig:
        """The breaker settings: the ones given in code, else the connection's ``breaker`` settings."""
        if self._breaker_config is not None:
            return self._breaker_config
        try:
            return BreakerConfig(**self._settings("breaker", _BREAKER_TUNABLES))
        except ValueError as exc:
            raise self._invalid("extra.breaker", _short(str(exc))) from None

    def get_rate_limit_per_second(self) -> float:
        """API calls per second per app key and tenant: the one given in code, else the connection's
        ``rate_limit_per_second``, else ServiceTitan's 60. The limiter keeps a safety margin below it."""
        if self._rate_limit_per_second is not None:
            return self._rate_limit_per_second
        return self._rate_field("rate_limit_per_second", DEFAULT_RATE_LIMIT_PER_SECOND)

    def get_token_rate_limit_per_second(self) -> float:
        """Token requests per second per client id: the one given in code, else the connection's
        ``token_rate_limit_per_second``, else 1."""
        if self._token_rate_limit_per_second is not None:
            return self._token_rate_limit_per_second
        return self._rate_field("token_rate_limit_per_second", DEFAULT_TOKEN_RATE_LIMIT_PER_SECOND)

    def get_redis(self) -> redis.Redis | None:
        """A Redis client with short timeouts from the Redis connection, or ``None`` (per-process state)."""
        return None if self.redis_conn_id is None else redis_from_connection(self.redis_conn_id)

    def get_conn(self) -> ServiceTitanClient:
        """A client for the connection's tenant; validated before any network call."""
        return self._client

    def close(self) -> None:
        """Close the client's HTTP sessions, if a client was built; the next :meth:`get_conn`
        builds a new one."""
        client = self.__dict__.pop("_client", None)
        if client is not None:
            client.close()

    def __enter__(self) -> ServiceTitanHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @cached_property
    def _client(self) -> ServiceTitanClient:
        credentials = self.get_credentials()
        metrics = MetricsListener(self.servicetitan_conn_id)
        retry_policy = self.get_retry_policy()
        retry_listeners = [metrics.on_retry, retry_policy.listener, self._retry_listener]
        retry_policy = retry_policy.with_overrides(listener=_fan_out(retry_listeners))
        if self._max_retry_after is not None:
            retry_policy = retry_policy.with_overrides(max_retry_after=self._max_retry_after)
        breaker_config = self.get_breaker_config()
        redis_client = self.get_redis()
        tokens = TokenManager(
            credentials,
            redis_client,
            fernet=self._fernet(),
            namespace=self.namespace,
            on_token=mask_secret,
            on_renew=metrics.on_renew,
            redis_recheck_seconds=breaker_config.redis_recheck_seconds,
            token_rate_limit_per_second=self.get_token_rate_limit_per_second(),
        )
        rate_limiter = api_rate_limiter(
            credentials,
            redis_client,
            rate_per_second=self.get_rate_limit_per_second(),
            namespace=self.namespace,
            redis_recheck_seconds=breaker_config.redis_recheck_seconds,
        )
        breaker = CircuitBreaker(
            breaker_name(credentials),
            redis_client,
            config=breaker_config,
            namespace=self.namespace,
            listeners=(metrics.on_transition,),
            classify=classify_servicetitan_error,
        )
        return ServiceTitanClient(
            tokens, breaker=breaker, retry_policy=retry_policy, timeout=self.timeout, rate_limiter=rate_limiter
        )

    def test_connection(self) -> tuple[bool, str]:
        """Used by the UI's Test button: obtain a token and make one cheap API call."""
        with self:
            try:
                client = self.get_conn()
                client.request("GET", get_resource("customers").list_path(client.tenant_id), params={"pageSize": 1})
            except ServiceTitanError as exc:
                return False, f"{type(exc).__name__}: {exc}"
            creds = client.credentials
            return True, f"Connected to ServiceTitan tenant {creds.tenant_id} ({creds.environment}): token and API OK"

    def _settings(self, name: str, allowed: frozenset[str]) -> dict[str, Any]:
        """A tuning section of the connection extra, e.g. ``breaker``, with unknown keys rejected."""
        section = self._extra.get(name) or {}
        if not isinstance(section, Mapping):
            raise self._invalid(f"extra.{name}", "a JSON object of settings")
        unknown = sorted(set(section) - allowed)
        if unknown:
            raise self._invalid(f"extra.{name}.{unknown[0][:PREVIEW_CHARS]}", f"one of {', '.join(sorted(allowed))}")
        for key, value in section.items():
            number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if key != "preset" and not number:
                raise self._invalid(f"extra.{name}.{key}", "a finite number")
        return dict(section)

    def _rate_field(self, name: str, default: float) -> float:
        """A rate limit from the connection field ``name`` (a number, or its text as the form may
        store it); empty means ``default``."""
        raw = self._extra.get(name)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return default
        value: float | None = None
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        elif isinstance(raw, str) and len(raw) <= PREVIEW_CHARS:
            try:
                value = float(raw.strip())
            except ValueError:
                value = None
        if value is None or not math.isfinite(value) or not 0 < value <= _MAX_RATE_PER_SECOND:
            raise self._invalid(name, f"a number of requests per second > 0 and <= {_MAX_RATE_PER_SECOND:g}")
        return value

    def _invalid(self, field: str, expected: str) -> CredentialValidationError:
        return CredentialValidationError(field, expected, conn_id=self.servicetitan_conn_id)

    def _fernet(self) -> Fernet | MultiFernet | None:
        """The key for tokens in Redis: the one given in code, else Airflow's, else derived from the secret."""
        if self._token_encryption_key is not None:
            fernet = _multi_fernet(self._token_encryption_key)
            if fernet is None:
                raise self._invalid("token_encryption_key", "valid Fernet key(s), comma-separated")
            return fernet
        from airflow.sdk.configuration import conf

        airflow_key = conf.get("core", "fernet_key", fallback="")
        fernet = _multi_fernet(airflow_key) if airflow_key else None
        if airflow_key and fernet is None:
            log.warning(
                "[core] fernet_key is not a valid Fernet key; tokens in Redis use a key derived from the secret"
            )
        return fernet


def _short(message: str, limit: int = 200) -> str:
    """A setting's error message, cut so that a huge value cannot make a huge error."""
    return message if len(message) <= limit else f"{message[:limit]}..."


def _fan_out(listeners: list[Callable[[RetryEvent], None] | None]) -> Callable[[RetryEvent], None]:
    """One retry listener that calls every given one (metrics, sync log counts, the caller's own)."""
    chosen = [listener for listener in listeners if listener is not None]

    def notify(event: RetryEvent) -> None:
        for listener in chosen:
            listener(event)

    return notify


def _multi_fernet(keys: str) -> MultiFernet | None:
    try:
        return MultiFernet([Fernet(part.strip().encode()) for part in keys.split(",")])
    except ValueError:
        return None
