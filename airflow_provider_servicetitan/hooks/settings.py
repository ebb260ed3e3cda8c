"""The provider's ``[servicetitan]`` Airflow config section: one place for the shared-state settings.

The hook, the connection form's Test button (which builds the hook with its defaults), the
operators and the alert notifier read the Redis connection and key namespace from here when they
are not given explicitly, so that all of them see the same tokens, breakers and alert state. Set
them in ``airflow.cfg``::

    [servicetitan]
    redis_conn_id = redis_default
    redis_namespace = servicetitan

or as environment variables (``AIRFLOW__SERVICETITAN__REDIS_NAMESPACE``). The section is declared
in :func:`~airflow_provider_servicetitan.get_provider_info.get_provider_info` (``airflow config
list`` shows it); the defaults below apply even where Airflow has not loaded provider configs.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from airflow_provider_servicetitan.get_provider_info import CONFIG_SECTION as SECTION
from airflow_provider_servicetitan.get_provider_info import DEFAULT_REDIS_CONN_ID, DEFAULT_REDIS_NAMESPACE
from airflow_provider_servicetitan.resilience.keys import require_key_part

__all__ = [
    "DEFAULT_REDIS_CONN_ID",
    "DEFAULT_REDIS_NAMESPACE",
    "FROM_CONFIG",
    "SECTION",
    "FromConfig",
    "redis_conn_id",
    "redis_namespace",
]


class FromConfig(Enum):
    """The default of an argument that is read from the ``[servicetitan]`` section (``None`` can
    mean something else there: no Redis)."""

    FROM_CONFIG = "from [servicetitan] config"


FROM_CONFIG: Final = FromConfig.FROM_CONFIG


def redis_conn_id(given: str | FromConfig | None = FROM_CONFIG) -> str | None:
    """The Airflow Redis connection of the shared state: ``given``, else ``[servicetitan]
    redis_conn_id`` (default ``redis_default``). ``None`` (or the option set empty) means no Redis:
    every process keeps its own state."""
    if not isinstance(given, FromConfig):
        return given
    return _option("redis_conn_id", DEFAULT_REDIS_CONN_ID).strip() or None


def redis_namespace(given: str | None = None) -> str:
    """The prefix of every Redis key: ``given``, else ``[servicetitan] redis_namespace`` (default
    ``servicetitan``).

    :raises ValueError: the configured namespace is not a valid key part (see
        :mod:`~airflow_provider_servicetitan.resilience.keys`); the message names the setting. A
        ``given`` one is checked where it is used, as before.
    """
    if given is not None:
        return given
    value = _option("redis_namespace", DEFAULT_REDIS_NAMESPACE).strip()
    require_key_part(value, f"[{SECTION}] redis_namespace (AIRFLOW__{SECTION.upper()}__REDIS_NAMESPACE)")
    return value


def _option(name: str, default: str) -> str:
    # Imported on use: Airflow builds its configuration on first access, not when a DAG file imports this.
    from airflow.sdk.configuration import conf

    return str(conf.get(SECTION, name, fallback=default))
