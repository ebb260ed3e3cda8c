"""Provider metadata read by Airflow's ProvidersManager through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_servicetitan import __version__

CONNECTION_TYPE = "servicetitan"
# The provider's Airflow config section (read by hooks.settings) and the defaults of its options.
CONFIG_SECTION = "servicetitan"
DEFAULT_REDIS_CONN_ID = "redis_default"
DEFAULT_REDIS_NAMESPACE = "servicetitan"


def _text(label: str, description: str, *, secret: bool = False, **schema: Any) -> dict[str, Any]:
    field_schema: dict[str, Any] = {"type": ["string", "null"], **schema}
    if secret:
        field_schema["format"] = "password"
    return {"label": label, "description": description, "schema": field_schema}


def get_provider_info() -> dict[str, Any]:
    """Describe the provider: its hook, connection type, the connection form fields and its config."""
    return {
        "package-name": "airflow-provider-servicetitan",
        "name": "ServiceTitan",
        "description": "Resilient, checkpointed sync of ServiceTitan data for many credentials.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "ServiceTitan",
                "external-doc-url": "https://developer.servicetitan.io/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "ServiceTitan",
                "python-modules": ["airflow_provider_servicetitan.hooks.servicetitan"],
            }
        ],
        "triggers": [
            {
                "integration-name": "ServiceTitan",
                "python-modules": ["airflow_provider_servicetitan.triggers.breaker"],
            }
        ],
        "config": {
            CONFIG_SECTION: {
                "description": (
                    "Shared state of the ServiceTitan provider: the hook, the connection form's Test button, "
                    "the operators and the alert notifier use these where they are not given explicitly, "
                    "so all of them see the same tokens, circuit breakers and alert deduplication."
                ),
                "options": {
                    "redis_conn_id": {
                        "description": (
                            "Airflow Redis connection holding the shared tokens, circuit breakers and alert "
                            "deduplication of every worker. Empty: each process keeps its own state."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "redis_default",
                        "default": DEFAULT_REDIS_CONN_ID,
                    },
                    "redis_namespace": {
                        "description": (
                            "Prefix of every Redis key of the provider (letters, digits and _.:/@-, at most "
                            "200). Deployments sharing one Redis keep their state apart with different ones."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "servicetitan_prod",
                        "default": DEFAULT_REDIS_NAMESPACE,
                    },
                },
            }
        },
        "notifications": ["airflow_provider_servicetitan.notifications.notifier.ServiceTitanAlertNotifier"],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_servicetitan.hooks.servicetitan.ServiceTitanHook",
                "hook-name": "ServiceTitan",
                "connection-type": CONNECTION_TYPE,
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port"],
                    "relabeling": {"login": "Client ID", "password": "Client secret"},
                    "placeholders": {"login": "cid.xxxxxxxxxxxx", "password": "cs1.xxxxxxxxxxxx"},
                },
                "conn-fields": {
                    "app_key": _text("App key", "ServiceTitan application key (ST-App-Key).", secret=True),
                    "tenant_id": {
                        "label": "Tenant ID",
                        "description": "Numeric ServiceTitan tenant id.",
                        "schema": {"type": ["integer", "string", "null"]},
                    },
                    "environment": _text(
                        "Environment",
                        "Which ServiceTitan environment the client id belongs to.",
                        enum=["production", "integration"],
                        default="production",
                    ),
                    "auth_url": _text(
                        "Token URL (optional)",
                        "Overrides the environment's token endpoint, e.g. http://127.0.0.1:8765/connect/token "
                        "for the sandbox.",
                    ),
                    "api_url": _text(
                        "API base URL (optional)",
                        "Overrides the environment's API host, e.g. http://127.0.0.1:8765 for the sandbox.",
                    ),
                    "rate_limit_per_second": {
                        "label": "API rate limit (calls/s, optional)",
                        "description": (
                            "API calls per second ServiceTitan allows this app key on this tenant (default 60, "
                            "its published limit). Every worker shares it through Redis and stays 5% below it."
                        ),
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                    },
                    "token_rate_limit_per_second": {
                        "label": "Token rate limit (requests/s, optional)",
                        "description": (
                            "Token requests per second for this client id across all workers (default 1; "
                            "ServiceTitan publishes no number)."
                        ),
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                    },
                },
            }
        ],
    }
