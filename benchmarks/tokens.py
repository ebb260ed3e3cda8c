"""Group ``tokens``: token requests of 16 worker processes x 25 API calls on one credential.

All processes start together (a barrier), as Airflow workers do at the top of a schedule.

* **ours**: each process builds our client as the hook does; the token comes from the shared,
  encrypted token cache in Redis, renewed single-flight across processes.
* **peers**: a bare ``requests`` loop per process that fetches its own token once (16 token
  requests), and the naive one that fetches a token for every call (400).

The sandbox counts the token requests it received (``/_sandbox/stats``); its token rate limit is
raised so that no peer is refused. Every API call must succeed, else the row is not ok.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import time
from typing import Any

import redis
import requests

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.client.client import DEFAULT_RATE_LIMIT_PER_SECOND
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.resilience.ratelimit import DEFAULT_SAFETY_MARGIN
from benchmarks._sandbox import SandboxProcess, credential_fields, new_namespace, our_client, release
from benchmarks.table import BenchOptions, Row

GROUP = "tokens"
PROCESSES = 16
CALLS = 25


def _path(credentials: ServiceTitanCredentials) -> str:
    return get_resource("customers").list_path(credentials.tenant_id)


def ours_worker(
    fields: dict[str, Any], redis_url: str, namespace: str, start: multiprocessing.synchronize.Barrier, results: Any
) -> None:
    credentials = ServiceTitanCredentials(**fields)
    shared = redis.Redis.from_url(redis_url)
    client = our_client(credentials, shared, namespace)
    start.wait()
    done = sum(1 for _ in range(CALLS) if client.request("GET", _path(credentials), params={"pageSize": 1}) is not None)
    release(client)
    shared.close()
    results.put(done)


def bare_worker(
    fields: dict[str, Any], per_call: bool, start: multiprocessing.synchronize.Barrier, results: Any
) -> None:
    credentials = ServiceTitanCredentials(**fields)
    url = f"{credentials.base_url}{_path(credentials)}"
    grant = {
        "grant_type": "client_credentials",
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
    }
    done = 0
    with requests.Session() as session:

        def token() -> str:
            answer = session.post(credentials.token_url, data=grant, timeout=30)
            answer.raise_for_status()
            return str(answer.json()["access_token"])

        start.wait()
        current = None if per_call else token()
        for _ in range(CALLS):
            value = token() if per_call else current
            headers = {"Authorization": f"Bearer {value}", "ST-App-Key": credentials.app_key}
            response = session.get(url, params={"pageSize": 1}, headers=headers, timeout=60)
            done += response.ok
    results.put(done)


def _run(sandbox: SandboxProcess, target: Any, args: tuple[Any, ...]) -> tuple[int, int, float]:
    """Token requests the sandbox received, successful calls, wall seconds of the slowest process."""
    # A fork server that imported this module already: 16 children start in a fraction of a second.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    start = context.Barrier(PROCESSES + 1)
    results = context.Queue()
    sandbox.admin.reset()
    processes = [context.Process(target=target, args=(*args, start, results)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    start.wait(timeout=120)  # every process is ready: imports done, client built
    started = time.perf_counter()
    done = sum(results.get(timeout=300) for _ in processes)
    seconds = time.perf_counter() - started
    for process in processes:
        process.join(timeout=60)
    stats = sandbox.admin.stats()
    return int(stats["token_requests_total"]), done, seconds


def measure(options: BenchOptions) -> list[Row]:
    expected = PROCESSES * CALLS
    with SandboxProcess(records=10, token_rate_limit=100_000) as sandbox:
        fields = credential_fields(sandbox.credentials())
        namespace = new_namespace("tokens")
        try:
            ours_tokens, ours_done, ours_seconds = _run(sandbox, ours_worker, (fields, options.redis_url, namespace))
        finally:
            shared = redis.Redis.from_url(options.redis_url)
            keys = list(shared.scan_iter(match=f"{namespace}*"))
            if keys:
                shared.delete(*keys)
            shared.close()
        once_tokens, once_done, once_seconds = _run(sandbox, bare_worker, (fields, False))
        naive_tokens, naive_done, naive_seconds = _run(sandbox, bare_worker, (fields, True))
    setup = f"{PROCESSES} processes x {CALLS} calls, started together"
    paced_rate = DEFAULT_RATE_LIMIT_PER_SECOND * (1 - DEFAULT_SAFETY_MARGIN)
    ours_ok = ours_done == expected
    calls_note = f"; {ours_done}/{expected} calls ok" if not ours_ok else ""
    return [
        Row(
            GROUP,
            "token requests, shared cache",
            ours_tokens,
            once_tokens,
            "a token per process",
            "token requests",
            ok=ours_ok and once_done == expected,
            note=setup + calls_note,
        ),
        Row(
            GROUP,
            "token requests, shared cache",
            ours_tokens,
            naive_tokens,
            "a token per call",
            "token requests",
            ok=ours_ok and naive_done == expected,
            note=setup + calls_note,
        ),
        Row(
            GROUP,
            "wall of all calls",
            ours_seconds,
            expected / paced_rate,
            f"the tenant's rate limit ({paced_rate:g} calls/s)",
            "s",
            ok=ours_ok,
            note=f"{setup}; every process paced by the tenant's shared limiter; unpaced, a token per process: "
            f"{once_seconds:.2f} s, a token per call: {naive_seconds:.2f} s",
        ),
    ]
