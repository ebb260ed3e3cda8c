"""``ServiceTitanHealthPlugin``: the health page in Airflow's navigation and its JSON API.

Registered through the ``airflow.plugins`` entry point (``airflow plugins`` lists it). Two Airflow 3
plugin interfaces:

* ``fastapi_apps``: the app of :mod:`.api`, mounted by the api-server under ``/servicetitan``;
* ``external_views``: a "ServiceTitan health" entry in the navigation (``Browse``) that shows the
  page of that app inside the UI (``/plugin/servicetitan-health``). Why an external view and not a
  React app: see ``docs/health-page.md``.

Airflow imports plugins in every component (scheduler, workers, CLI), so this module imports
nothing of the api-server: the FastAPI app is built on the first request it receives.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.plugins_manager import AirflowPlugin

__all__ = ["PAGE_ROUTE", "URL_PREFIX", "LazyHealthApp", "ServiceTitanHealthPlugin"]

URL_PREFIX = "/servicetitan"
PAGE_ROUTE = "servicetitan-health"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LazyHealthApp:
    """An ASGI app that builds the plugin's FastAPI app (:func:`.api.create_app`) on its first request."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def _build(self) -> Any:
        with self._lock:
            if self._app is None:
                from airflow_provider_servicetitan.plugins.api import create_app

                self._app = create_app()
            return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app if self._app is not None else self._build()
        await app(scope, receive, send)


class ServiceTitanHealthPlugin(AirflowPlugin):
    """Credential, breaker, token, sync and dead letter health of the ServiceTitan provider."""

    name = "servicetitan"
    fastapi_apps = [  # noqa: RUF012 - AirflowPlugin declares these as plain class attributes
        {"app": LazyHealthApp(), "url_prefix": URL_PREFIX, "name": "ServiceTitan health"},
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "ServiceTitan health",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": PAGE_ROUTE,
        },
    ]
