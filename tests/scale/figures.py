"""The figures of a scale run: throughput, Airflow's overhead per credential, and what each credential cost.

Task timings come from the REST API (``queued_when``, ``start_date``, ``end_date``); the sync's own time
from the warehouse's ``sync_log`` (first resource started to last resource finished, the resources of a
credential running concurrently), so overhead = task duration - the sync's own time.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from airflow_provider_servicetitan.storage.store import SyncStore
from tests.scale.settings import ScaleSettings

if TYPE_CHECKING:
    from tests.scale.scenario import Observed

_MIB = 1024 * 1024


def when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def seconds_between(start: str | None, end: str | None) -> float | None:
    began, ended = when(start), when(end)
    return None if began is None or ended is None else (ended - began).total_seconds()


def sync_spans(store: SyncStore, run_id: str) -> dict[str, float]:
    """Seconds from the first resource's start to the last one's end, per credential, in the run ``run_id``."""
    log = store.tables.sync_log
    query = (
        select(log.c.credential, func.min(log.c.started_at), func.max(log.c.finished_at))
        .where(log.c.run_id == run_id)
        .group_by(log.c.credential)
    )
    with store.engine.connect() as conn:
        return {
            credential: (finished - started).total_seconds()
            for credential, started, finished in conn.execute(query)
            if started is not None and finished is not None
        }


def summary(values: Iterable[float]) -> dict[str, float | int]:
    """count, mean, median, p95 and max of ``values`` (seconds), rounded to the millisecond."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    figures = {
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p95": p95,
        "max": ordered[-1],
    }
    return {"count": len(ordered), **{name: round(value, 3) for name, value in figures.items()}}


def task_overhead(
    instances: Iterable[Mapping[str, Any]], spans: Mapping[str, float], *, exclude: Iterable[str]
) -> dict[str, dict[str, float | int]]:
    """Queue latency, duration and overhead of the successful ``sync`` and ``recover`` instances of the
    healthy credentials (``exclude``: the credentials whose tasks waited on purpose or failed at once)."""
    left_out = set(exclude)
    latency: dict[str, list[float]] = {"sync": [], "recover": []}
    duration: dict[str, list[float]] = {"sync": [], "recover": []}
    overhead: list[float] = []
    for ti in instances:
        kind = str(ti["task_id"]).rsplit(".", 1)[-1]
        if kind not in latency or ti["state"] != "success" or ti["rendered_map_index"] in left_out:
            continue
        waited = seconds_between(ti["queued_when"], ti["start_date"])
        took = seconds_between(ti["start_date"], ti["end_date"])
        if waited is not None:
            latency[kind].append(waited)
        if took is not None:
            duration[kind].append(took)
            own = spans.get(ti["rendered_map_index"])
            if kind == "sync" and own is not None:
                overhead.append(took - own)
    return {
        "sync_queued_to_start_s": summary(latency["sync"]),
        "sync_duration_s": summary(duration["sync"]),
        "sync_own_time_s": summary(spans[c] for c in spans if c not in left_out),
        "sync_overhead_s": summary(overhead),
        "recover_queued_to_start_s": summary(latency["recover"]),
        "recover_duration_s": summary(duration["recover"]),
    }


def slot_time(instances: Iterable[Mapping[str, Any]], *, exclude: Iterable[str]) -> dict[str, Any]:
    """Worker-slot seconds each healthy credential took (its ``sync`` and ``recover`` durations), and the
    credentials one slot could sync per hour at that rate, if it were never idle."""
    left_out = set(exclude)
    per_credential: dict[str, float] = {}
    for ti in instances:
        kind = str(ti["task_id"]).rsplit(".", 1)[-1]
        took = seconds_between(ti["start_date"], ti["end_date"])
        if kind in ("sync", "recover") and ti["rendered_map_index"] not in left_out and took is not None:
            per_credential[ti["rendered_map_index"]] = per_credential.get(ti["rendered_map_index"], 0.0) + took
    seconds = summary(per_credential.values())
    if not per_credential:
        return {"slot_seconds_per_credential": seconds}
    return {
        "slot_seconds_per_credential": seconds,
        "credentials_per_hour_per_busy_slot": round(3600.0 / statistics.fmean(per_credential.values()), 1),
    }


def throughput(instances: Iterable[Mapping[str, Any]], run_start: str, credentials: Iterable[str]) -> dict[str, float]:
    """Credentials per minute: ``credentials`` done (their last task ended) over the time since the run started."""
    wanted = set(credentials)
    ends = [
        when(ti["end_date"])
        for ti in instances
        if ti["rendered_map_index"] in wanted and ti["end_date"] is not None and str(ti["task_id"]).endswith(".recover")
    ]
    started = when(run_start)
    last = max((end for end in ends if end is not None), default=None)
    if started is None or last is None:
        return {}
    seconds = (last - started).total_seconds()
    return {
        "credentials": len(wanted),
        "seconds": round(seconds, 1),
        "credentials_per_minute": round(60.0 * len(wanted) / seconds, 2),
    }


def per_slot(figures: Mapping[str, Any], slots: int) -> float:
    """Credentials per hour per worker slot, as measured (idle time between tasks included)."""
    return round(60.0 * float(figures.get("credentials_per_minute", 0.0)) / slots, 1)


def mib(value: int) -> float:
    return round(value / _MIB, 1)


def scale_figures(settings: ScaleSettings, observed: Observed, credentials: list[str]) -> dict[str, Any]:
    """Every figure of the run, JSON-ready. The outage and rejected credentials are left out of the timings
    (one waited on purpose, the other failed at once); Redis commands and metadata rows are per credential."""
    outage, rejected = credentials[settings.outage], credentials[settings.rejected]
    speed = throughput(observed.instances, observed.run["start_date"], [c for c in credentials if c != outage])
    redis_used, rows, stats = observed.redis_used, observed.rows_added, observed.sandbox_stats
    return {
        "tenants": settings.tenants,
        "max_map_length": settings.max_map_length,
        "shards": settings.shards,
        "workers": settings.workers,
        "concurrency": settings.concurrency,
        "records_per_resource": settings.records,
        "wall_seconds": round(observed.wall, 1),
        "all_but_outage_done_seconds": round(observed.others_done, 1),
        "throughput": speed,
        "credentials_per_hour_per_slot": per_slot(speed, settings.slots),
        "task_overhead": task_overhead(observed.instances, observed.spans, exclude=[outage, rejected]),
        "worker_slots": slot_time(observed.instances, exclude=[outage, rejected]),
        "redis": {
            "commands_total": redis_used.total,
            "commands_per_credential_run": round(redis_used.total / settings.tenants, 1),
            "by_command_per_credential_run": {
                name: round(calls / settings.tenants, 2) for name, calls in redis_used.calls.most_common()
            },
            # What stays in Redis after the run (tokens, breakers, limiters, alert windows: all with a TTL).
            "keys_per_credential": round(observed.redis_held.keys / settings.tenants, 2),
            "bytes_per_credential": round(observed.redis_held.used_memory / settings.tenants),
        },
        "metadata_rows_added": {
            "total": rows.total(),
            "per_credential": round(rows.total() / settings.tenants, 1),
            "by_table": dict(rows.most_common()),
        },
        # CPU seconds per credential-run of each Airflow process tree (workers with their task processes).
        "cpu_seconds_per_credential": {
            name: round(seconds / settings.tenants, 3) for name, seconds in sorted(observed.cpu.items())
        },
        "worker_peak_rss_mib": {name: mib(peak) for name, peak in observed.peak_rss.items()},
        "worker_peak_pss_mib": {name: mib(peak) for name, peak in observed.peak_pss.items()},
        "memory_samples": observed.memory_samples,
        "tasks_per_worker": observed.tasks_per_worker,
        "sandbox": {
            key: stats[key]
            for key in (
                "requests_total",
                "requests_by_status",
                "token_requests_total",
                "token_requests_issued",
                "responses_429",
            )
        },
        "breaker_transitions": {"|".join(key): n for key, n in sorted(observed.transitions.items())},
    }


def write_report(path: Path, figures: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def lines(figures: Mapping[str, Any], prefix: str = "scale") -> list[str]:
    """The figures as ``prefix: key = value`` lines, one per leaf, for the terminal."""
    found: list[str] = []
    for key, value in figures.items():
        if isinstance(value, Mapping):
            found.extend(lines(value, f"{prefix}.{key}"))
        else:
            found.append(f"{prefix}: {key} = {value}")
    return found
