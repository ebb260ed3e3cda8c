"""Group ``memory``: peak RSS of a child process that syncs N records vs 10 x N records.

Our sync holds one export page at a time, so its peak memory should not grow with the size of the
export: the ratio of the two peaks should stay near 1. Each size runs in a fresh child process
(``python -m benchmarks.memory --child``) against a sandbox of its own (page size 500, 0 ms
latency) into a temp SQLite file; the child reports its own ``ru_maxrss`` and its RSS once imports
and client were ready (the baseline), and the stored ids are checked against the sandbox's truth.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._sandbox import SandboxProcess, credential_fields, truth_mismatch
from benchmarks.table import BenchOptions, Row

GROUP = "memory"
RESOURCE = "customers"
ROOT = Path(__file__).resolve().parents[1]


def child(job: dict[str, Any]) -> dict[str, Any]:
    """In the child: sync ``job``'s resource into ``job``'s store; peak and baseline RSS in KiB."""
    import psutil

    from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
    from airflow_provider_servicetitan.storage.store import SyncStore
    from airflow_provider_servicetitan.sync.engine import sync_resource
    from benchmarks._sandbox import our_client

    credentials = ServiceTitanCredentials(**job["credentials"])
    with SyncStore(job["store_url"]) as store:
        store.create_tables()
        with our_client(credentials, None, "stbench-memory") as client:
            baseline = psutil.Process().memory_info().rss // 1024
            summary = sync_resource(client, store, credential="bench", resource=job["resource"], run_id="bench")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"baseline_kib": baseline, "peak_kib": peak, "stored": summary.successful}


def _measure_size(records: int) -> tuple[dict[str, Any], dict[str, str]]:
    with SandboxProcess(records=records) as sandbox, tempfile.TemporaryDirectory() as tmp:
        credentials = sandbox.credentials()
        store_url = f"sqlite:///{Path(tmp) / 'memory.db'}"
        job = {"credentials": credential_fields(credentials), "store_url": store_url, "resource": RESOURCE}
        finished = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--child"],
            input=json.dumps(job),  # the secrets travel on stdin, not in argv
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            timeout=1800,
        )
        if finished.returncode != 0:
            raise RuntimeError(f"memory child failed ({finished.returncode}): {finished.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
        from airflow_provider_servicetitan.storage.store import SyncStore

        with SyncStore(store_url) as store:
            problems = truth_mismatch(sandbox, store, credentials.tenant_id, [RESOURCE])
    return result, problems


def measure(options: BenchOptions) -> list[Row]:
    small, large = (2_000, 20_000) if options.quick else (10_000, 100_000)
    small_result, small_problems = _measure_size(small)
    large_result, large_problems = _measure_size(large)
    ok = not small_problems and not large_problems
    problems = "; ".join(f"{what}" for what in (*small_problems.values(), *large_problems.values()))
    note = f"SQLite, page 500, child process per size; {problems}" if problems else "SQLite, page 500, child per size"
    mib = 1024.0
    return [
        Row(
            GROUP,
            f"peak RSS, sync of {large // 1000}k records",
            large_result["peak_kib"] / mib,
            small_result["peak_kib"] / mib,
            f"same sync, {small // 1000}k records",
            "MiB",
            ok=ok,
            note=note,
        ),
        Row(
            GROUP,
            f"peak RSS over baseline, {large // 1000}k records",
            (large_result["peak_kib"] - large_result["baseline_kib"]) / mib,
            (small_result["peak_kib"] - small_result["baseline_kib"]) / mib,
            f"same sync, {small // 1000}k records",
            "MiB",
            ok=ok,
            note=(
                f"baseline = RSS after imports and client ({large_result['baseline_kib'] / mib:.0f} / "
                f"{small_result['baseline_kib'] / mib:.0f} MiB)"
            ),
        ),
    ]


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(child(json.loads(sys.stdin.read()))))
    else:
        raise SystemExit("usage: python -m benchmarks.memory --child  (benchmarks/run.py runs it)")
