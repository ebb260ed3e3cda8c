"""A sandbox for the health page under real Airflow services: two credentials of their own, one
``needs_attention`` (with a hostile reason, an open dead letter and an interrupted sync), one with
its circuit breaker held open; removed again afterwards.

The credentials are those of the sandbox's first credential with a client id and a tenant id of
their own (a tenant the sandbox does not have): their breakers, tokens and rows are theirs alone, so
nothing the other e2e tests sync, audit or watch in Redis (the breakers of the sandbox's tenants)
sees them, and a run triggered for them syncs no sandbox data. State is written through the
project's own APIs (``SyncStore``, ``CircuitBreaker``), the way a sync leaves it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from airflow_provider_servicetitan.client.auth.cache import SharedTokenCache
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.resilience.breaker import CircuitBreaker
from airflow_provider_servicetitan.storage import DeadLetterIn, RunOwner, SyncStore
from tests.e2e.session import REDIS_URL, SERVICETITAN_CONN_TYPE, E2ESession

BASE_INDEX = 0
TENANT_ID = 990_001
"""Not a tenant of the sandbox (its tenants are 1001, 1002, ...)."""
HOSTILE_REASON = "<img src=x onerror=\"document.title='pwned'\"> token endpoint said: invalid_client"
HOSTILE_ERROR = "<script>document.title='pwned'</script> modifiedOn is not a date"
API = "/servicetitan/api"
CACHED_TOKEN = "e2e-placeholder-token-never-shown"
TOKEN_SECONDS = 600


@dataclass
class HealthSandbox:
    """The two credentials, the ids of what was written, and a Redis client of the session's Redis."""

    attention: str
    open_breaker: str
    dead_letter_id: int
    namespace: str
    redis: redis.Redis
    store: SyncStore

    def row(self, payload: dict[str, Any], conn_id: str) -> dict[str, Any]:
        rows = {row["conn_id"]: row for row in payload["credentials"]}
        assert conn_id in rows, sorted(rows)
        row: dict[str, Any] = rows[conn_id]
        return row

    def breaker(self, name: str) -> CircuitBreaker:
        return CircuitBreaker(name, self.redis, namespace=self.namespace)


def _fields(session: E2ESession, client_id_suffix: str) -> dict[str, Any]:
    fields = session.connection_fields(BASE_INDEX)
    fields["login"] = f"{fields['login']}-{client_id_suffix}"
    fields["extra"] = {**fields["extra"], "tenant_id": str(TENANT_ID)}
    return fields


def _credentials(conn_id: str, fields: dict[str, Any]) -> ServiceTitanCredentials:
    extra = fields["extra"]
    return ServiceTitanCredentials.from_fields(
        client_id=fields["login"],
        client_secret=fields["password"],
        app_key=extra["app_key"],
        tenant_id=extra["tenant_id"],
        environment=extra["environment"],
        auth_url=extra["auth_url"],
        api_url=extra["api_url"],
        conn_id=conn_id,
    )


@contextmanager
def health_sandbox(session: E2ESession, name: str) -> Iterator[HealthSandbox]:
    """Create the two connections ``servicetitan_<name>_attention`` / ``_open`` and their state."""
    rest = session.rest
    attention, open_breaker = f"servicetitan_{name}_attention", f"servicetitan_{name}_open"
    fields = {conn_id: _fields(session, conn_id) for conn_id in (attention, open_breaker)}
    for conn_id, conn_fields in fields.items():
        rest.create_connection(conn_id, SERVICETITAN_CONN_TYPE, **conn_fields)
    client = redis.Redis.from_url(REDIS_URL)
    with closing(client), closing(SyncStore(session.warehouse_url, table_prefix=session.table_prefix)) as store:
        store.create_tables()
        store.set_credential_status(attention, "needs_attention", reason=HOSTILE_REASON)
        store.set_credential_status(open_breaker, "degraded", reason="circuit breaker opened")
        run_id = f"health_{name}_run"
        store.commit_page(
            credential=attention,
            tenant_id=TENANT_ID,
            resource="customers",
            run_id=run_id,
            records=[],
            dead_letters=[
                DeadLetterIn(record_id=None, raw="{}", error_class="RecordValidationError", message=HOSTILE_ERROR)
            ],
            continue_from=None,
        )
        store.finish_run(run_id, attention, "customers", "partial", "1 bad record")
        # A sync whose process died: the next sync marks it interrupted.
        store.start_run(run_id, attention, "jobs", RunOwner(host="gone", scope="gone", pid=1))
        (seen,) = store.running_runs(attention, "jobs")
        assert store.mark_interrupted(seen, by_run_id=f"health_{name}_next", message="worker gone")
        (letter,) = store.unresolved_dead_letters(attention)
        sandbox = HealthSandbox(attention, open_breaker, letter.id, session.redis_namespace, client, store)
        payload = rest.call("GET", f"{API}/credentials")
        held = sandbox.breaker(sandbox.row(payload, open_breaker)["breaker"]["name"])
        held.force_open(3600)
        # A token in the shared cache of the held credential, as a worker leaves it (not a real token:
        # the page only ever reads how long it has left).
        SharedTokenCache(
            _credentials(open_breaker, fields[open_breaker]),
            client,
            namespace=session.redis_namespace,
            clock=time.monotonic,
        ).store(CACHED_TOKEN, TOKEN_SECONDS)
        try:
            yield sandbox
        finally:
            held.reset()
            for letter in store.unresolved_dead_letters(attention):
                store.resolve_dead_letter(letter.id, None, run_id=f"health_{name}_cleanup")
            for conn_id in (attention, open_breaker):
                rest.request("DELETE", f"/api/v2/connections/{conn_id}")
