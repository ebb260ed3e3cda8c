"""Group ``sync``: how fast our sync reads an export, next to a bare ``requests`` loop over the same feed.

The sandbox runs in its own process (``servicetitan-sandbox``), page size 500, one resource of N
records, its rate limit far above the load. At 50 ms and 0 ms of latency per request:

* **bare**: a token once, then ``GET`` export pages following ``continueFrom``, ``json()``-decoded
  and dropped: the ceiling of any client of this API on this machine.
* **ours**: ``sync_resource`` with our client as the hook builds it (token cache and breaker in
  Redis, default retry policy) into SQLite (a temp file) and into PostgreSQL (a database of our
  own, dropped after). The stored ids must equal the sandbox's truth, else the row is not ok.

Then one credential, the 7 export resources, 50 ms latency and the sandbox's default rate limit
(60/s): API requests/s achieved by ``sync_credential`` against the ceiling ``min(60, c / latency)``
for ``c`` concurrent requests, and the share of requests the sandbox answered 429. ``max_concurrency``
is passed when ``sync_credential`` has it (1, 4 and its default then); without it the sync is sequential (c = 1).
"""

from __future__ import annotations

import inspect
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES, get_resource
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.storage.store import SyncStore
from airflow_provider_servicetitan.sync.credential import DEFAULT_MAX_CONCURRENCY, sync_credential
from airflow_provider_servicetitan.sync.engine import sync_resource
from benchmarks._sandbox import (
    Factory,
    SandboxProcess,
    median,
    our_client,
    postgres_database,
    redis_namespace,
    release,
    stack,
    truth_mismatch,
)
from benchmarks.table import BenchOptions, Row

GROUP = "sync"
RESOURCE = "customers"
PAGE_SIZE = 500
LATENCIES = (0.05, 0.0)
CREDENTIAL_LATENCY = 0.05
CREDENTIAL_RATE_LIMIT = 60  # the sandbox's default, ServiceTitan's documented limit per app key and tenant
# Small pages for the credential rows: they measure how requests are paced and overlapped, not how
# fast records are stored (the rows above do), so a request must cost little CPU.
CREDENTIAL_PAGE_SIZE = 50


def bare_export(credentials: ServiceTitanCredentials, resource: str) -> int:
    """The peer: a token, then every export page, decoded and dropped. Returns the records seen."""
    with requests.Session() as session:
        grant = {
            "grant_type": "client_credentials",
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
        }
        answer = session.post(credentials.token_url, data=grant, timeout=30)
        answer.raise_for_status()
        headers = {"Authorization": f"Bearer {answer.json()['access_token']}", "ST-App-Key": credentials.app_key}
        url = f"{credentials.base_url}{get_resource(resource).export_path(credentials.tenant_id)}"
        params: dict[str, str] = {"includeRecentChanges": "false"}
        seen = 0
        while True:
            response = session.get(url, params=params, headers=headers, timeout=60)
            response.raise_for_status()
            body = response.json()
            seen += len(body.get("data") or [])
            if not body.get("hasMore"):
                return seen
            params["from"] = body["continueFrom"]


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


class _Ours:
    """Repeated syncs of one resource into a fresh store each time (new table prefix), checked against truth."""

    def __init__(self, sandbox: SandboxProcess, credentials: ServiceTitanCredentials, redis_url: str) -> None:
        self.sandbox = sandbox
        self.credentials = credentials
        self.redis_url = redis_url
        self.mismatches: list[str] = []

    def sync_seconds(self, store_url: str) -> float:
        prefix = f"b{uuid.uuid4().hex[:8]}"
        with (
            redis_namespace(self.redis_url, "sync") as (shared, namespace),
            SyncStore(store_url, table_prefix=prefix) as store,
        ):
            store.create_tables()
            client = our_client(self.credentials, shared, namespace)
            try:
                seconds = _timed(
                    lambda: sync_resource(client, store, credential="bench", resource=RESOURCE, run_id="bench")
                )
            finally:
                release(client)
            problems = truth_mismatch(self.sandbox, store, self.credentials.tenant_id, [RESOURCE])
            self.mismatches += [f"{store.engine.dialect.name} {name}: {what}" for name, what in problems.items()]
            store.tables.metadata.drop_all(store.engine)
        return seconds


def _speed_rows(sandbox: SandboxProcess, options: BenchOptions, records: int) -> list[Row]:
    credentials = sandbox.credentials()
    ours = _Ours(sandbox, credentials, options.redis_url)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, postgres_database(options.postgres_url, "sync") as pg_url:
        sqlite_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        for latency in LATENCIES:
            sandbox.admin.set_faults(latency=latency)
            bare_seen: list[int] = []
            timings: dict[str, list[float]] = {"bare": [], "sqlite": [], "postgresql": []}
            for _ in range(options.repeats):
                started = time.perf_counter()
                bare_seen.append(bare_export(credentials, RESOURCE))
                timings["bare"].append(time.perf_counter() - started)
                timings["sqlite"].append(ours.sync_seconds(sqlite_url))
                timings["postgresql"].append(ours.sync_seconds(pg_url))
            bare_rate = records / median(timings["bare"])
            bare_ok = all(seen == records for seen in bare_seen)
            note = f"median of {options.repeats}, {records} records, page {PAGE_SIZE}, {latency * 1000:g} ms latency"
            note += f"; ours: {stack()}"
            if not bare_ok:
                note += f"; bare loop saw {sorted(set(bare_seen))} records"
            for db in ("sqlite", "postgresql"):
                failed = [m for m in ours.mismatches if m.startswith(db)]
                rows.append(
                    Row(
                        GROUP,
                        f"export {RESOURCE} -> {db}, {latency * 1000:g} ms",
                        records / median(timings[db]),
                        bare_rate,
                        "bare requests loop",
                        "records/s",
                        ok=bare_ok and not failed,
                        note=note + ("; " + "; ".join(failed) if failed else ""),
                    )
                )
                ours.mismatches = [m for m in ours.mismatches if not m.startswith(db)]
    return rows


def _concurrency_levels() -> list[int | None]:
    """``None``: ``sync_credential`` has no ``max_concurrency`` (sequential, c = 1). Else 1, 4 and the
    default (every export resource at once)."""
    if "max_concurrency" in inspect.signature(sync_credential).parameters:
        return [level for level in sorted({1, 4, DEFAULT_MAX_CONCURRENCY})]
    return [None]


def _credential_rows(sandbox: SandboxProcess, options: BenchOptions, records: int) -> list[Row]:
    credentials = sandbox.credentials()
    resources = list(EXPORTABLE_RESOURCES)
    rows: list[Row] = []
    for concurrency in _concurrency_levels():
        sandbox.admin.reset()
        sandbox.admin.set_faults(latency=CREDENTIAL_LATENCY, rate_limit=CREDENTIAL_RATE_LIMIT)
        kwargs: dict[str, Any] = {} if concurrency is None else {"max_concurrency": concurrency}
        c = concurrency or 1
        with tempfile.TemporaryDirectory() as tmp, redis_namespace(options.redis_url, "cred") as (shared, ns):
            factory = Factory(credentials, shared, ns)
            with SyncStore(f"sqlite:///{Path(tmp) / 'cred.db'}") as store:
                store.create_tables()
                started = time.perf_counter()
                outcome = sync_credential(
                    factory, store, credential="bench", run_id="bench", resources=resources, **kwargs
                )
                seconds = time.perf_counter() - started
                factory.close()
                problems = truth_mismatch(sandbox, store, credentials.tenant_id, resources)
        stats = sandbox.admin.stats()
        api_requests = int(stats["requests_total"]) - int(stats["token_requests_total"])
        answered_429 = int(stats["responses_429"])
        ceiling = min(float(CREDENTIAL_RATE_LIMIT), c / CREDENTIAL_LATENCY)
        label = "sequential (no max_concurrency)" if concurrency is None else f"max_concurrency={concurrency}"
        ok = outcome.kind == "ok" and not problems
        detail = f"outcome {outcome.kind}" + (
            "; " + "; ".join(f"{k}: {v}" for k, v in problems.items()) if problems else ""
        )
        rows.append(
            Row(
                GROUP,
                f"credential, {len(resources)} resources, {label}",
                api_requests / seconds,
                ceiling,
                f"min({CREDENTIAL_RATE_LIMIT}/s, {c}/{CREDENTIAL_LATENCY * 1000:g} ms)",
                "requests/s",
                ok=ok,
                note=f"1 run, {records} records/resource, page {CREDENTIAL_PAGE_SIZE}, "
                f"{api_requests} requests in {seconds:.1f} s (the rate limiter's initial burst, half the rate, "
                f"lets so short a sync above the per-second ceiling); {detail}; " + stack(),
            )
        )
        if c == 1:
            rows.append(_bare_credential_row(sandbox, credentials, resources, api_requests / seconds, ok))
        rows.append(
            Row(
                GROUP,
                f"credential 429 answers, {label}",
                answered_429,
                api_requests,
                "API requests sent",
                "429s/requests",
                ok=ok,
                note=f"target 0: the sandbox's limit is {CREDENTIAL_RATE_LIMIT}/s",
            )
        )
    return rows


def _bare_credential_row(
    sandbox: SandboxProcess, credentials: ServiceTitanCredentials, resources: list[str], ours: float, ok: bool
) -> Row:
    """One request at a time, ours against a bare loop over the same exports: the ceiling 1/latency
    leaves out the time the server and any client spend on a page, which this peer includes."""
    sandbox.admin.reset()
    sandbox.admin.set_faults(latency=CREDENTIAL_LATENCY, rate_limit=CREDENTIAL_RATE_LIMIT)
    seconds = _timed(lambda: [bare_export(credentials, resource) for resource in resources])
    bare = sandbox.api_requests() / seconds
    return Row(
        GROUP,
        f"credential, {len(resources)} resources, max_concurrency=1, against a bare loop",
        ours,
        bare,
        "bare requests loop over the same exports",
        "requests/s",
        ok=ok,
        note=f"1 run each, page {CREDENTIAL_PAGE_SIZE}; the bare loop reaches "
        f"{bare * CREDENTIAL_LATENCY:.2f} of 1/{CREDENTIAL_LATENCY * 1000:g} ms",
    )


def measure(options: BenchOptions) -> list[Row]:
    records = 4_000 if options.quick else 20_000
    credential_records = 500 if options.quick else 1_000
    with SandboxProcess(records=records, export_page_size=PAGE_SIZE) as sandbox:
        rows = _speed_rows(sandbox, options, records)
    # The credential sync gets its own, smaller sandbox: 7 resources of `records` each would take long.
    with SandboxProcess(records=credential_records, export_page_size=CREDENTIAL_PAGE_SIZE) as sandbox:
        rows += _credential_rows(sandbox, options, credential_records)
    return rows
