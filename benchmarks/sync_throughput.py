"""Throughput and memory of a full export sync against the local sandbox.

Prints records per second and the peak Python memory while syncing, for a small and a large
export, so that "memory stays at one page" can be checked: the peak should grow with the page
size, not with the number of records.

    .venv/bin/python benchmarks/sync_throughput.py [--records 5000] [--page-size 500] [--db sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
import uuid

from sqlalchemy import create_engine, text

from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.client.breaker_policy import classify_servicetitan_error
from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.resilience.breaker import CircuitBreaker
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.sandbox import SandboxConfig, SandboxServer
from airflow_provider_servicetitan.storage.store import SyncStore
from airflow_provider_servicetitan.sync.engine import sync_resource

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def run(records: int, page_size: int, db: str) -> None:
    config = SandboxConfig(tenants=1, records=records, seed=7, export_page_size=page_size, rate_limit=100000)
    with SandboxServer(config) as sandbox, tempfile.TemporaryDirectory() as tmp:
        cred = sandbox.credentials[0]
        credentials = ServiceTitanCredentials(
            client_id=cred.client_id,
            client_secret=cred.client_secret,
            app_key=cred.app_key,
            tenant_id=cred.tenant_id,
            auth_url=sandbox.token_url,
            api_url=sandbox.base_url,
        )
        client = ServiceTitanClient(
            TokenManager(credentials, None),
            breaker=CircuitBreaker("bench", None, classify=classify_servicetitan_error),
            retry_policy=RetryPolicy(),
        )
        schema = f"st_bench_{uuid.uuid4().hex[:8]}"
        if db == "postgresql":
            admin = create_engine(POSTGRES_URL)
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        else:
            url = f"sqlite:///{tmp}/bench.db"
        try:
            with SyncStore(url) as store:
                store.create_tables()
                tracemalloc.start()
                started = time.perf_counter()
                summary = sync_resource(client, store, credential="bench", resource="customers", run_id="bench")
                elapsed = time.perf_counter() - started
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
        finally:
            if db == "postgresql":
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        print(
            f"{db:10s} records={summary.successful:6d} pages={summary.pages:4d} page_size={page_size:4d} "
            f"time={elapsed:6.2f}s rate={summary.successful / elapsed:8.0f} rec/s "
            f"peak_python_mem={peak / 2**20:6.1f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    for records in (args.records // 5, args.records):
        run(records, args.page_size, args.db)


if __name__ == "__main__":
    main()
