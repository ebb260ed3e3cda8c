"""Group ``faults``: a full sync of one credential (the 7 export resources) under each fault profile.

One sandbox in its own process (export pages of 200 records: more requests, so more faults), the
same data for every profile (``POST /_sandbox/reset``, then the profile). Like Airflow, a sync that
does not end ``ok`` is tried again, up to 4 attempts (the operator's ``retries=3``), after what the
outcome asks (``held_back_for``: open breaker, 429) or 1 s (Airflow's ``retry_delay`` is 1 min; the
pause is shortened here, its length is not what is measured). Wall time includes those pauses.
After the last attempt the stored ids of every resource must equal the sandbox's truth, else the
row is not ok.

Each of those rows is the sync of median wall time of ``--repeats`` (fault seeds 1, 2, ...), as is its
``none`` peer. Profiles: ``flaky``, ``ratelimited`` and ``chaos`` against ``none``. In ``chaos``,
``malformed_rate=0`` (malformed records are parked as dead letters by design, not retried: they
would differ from the truth whatever the retries) and ``timeout_hold=5`` (instead of 30 s, so a
handful of held requests does not dominate the wall time). ``outage`` (a 300 s outage) is left out.

Then ``ratelimited`` as it is, over 5 fault seeds: failed sync attempts (target 0), and the wall
time against the bound the rate limit sets: (successful requests - burst) / limit.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES
from airflow_provider_servicetitan.errors import root_cause
from airflow_provider_servicetitan.sandbox.knobs import PROFILES
from airflow_provider_servicetitan.storage.store import SyncStore
from airflow_provider_servicetitan.sync.credential import CredentialOutcome, sync_credential
from benchmarks._sandbox import Factory, SandboxProcess, redis_namespace, truth_mismatch
from benchmarks.table import BenchOptions, Row

GROUP = "faults"
MAX_ATTEMPTS = 4
PAGE_SIZE = 200  # more requests for the same data: more chances for a fault
# Every profile of the wall-time rows answers after this base latency, as ServiceTitan does: the
# faults are compared on top of a realistic request, not of a free one.
BASE_LATENCY = 0.05
PAUSE = 1.0
MAX_PAUSE = 120.0
COMPARED: dict[str, dict[str, Any]] = {
    "flaky": {},
    "ratelimited": {},
    "chaos": {"malformed_rate": 0.0, "timeout_hold": 5.0},
}


@dataclass
class Outcome:
    seconds: float
    attempts: int
    failed: int
    api_requests: int
    answered_429: int
    faults: int
    problems: dict[str, str]
    last_kind: str
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        what = f"{self.attempts} attempt(s), {self.failed} failed, last {self.last_kind}; "
        if self.failures:
            what += f"failed on: {', '.join(self.failures)}; "
        what += f"{self.api_requests} requests, {self.answered_429} x 429, {self.faults} faults (latency not counted)"
        if self.problems:
            what += "; DIFFERS: " + "; ".join(f"{k}: {v}" for k, v in self.problems.items())
        return what


def full_sync(
    sandbox: SandboxProcess,
    redis_url: str,
    profile: str,
    knobs: dict[str, Any],
    rate_per_second: float | None = None,
) -> Outcome:
    """Reset the sandbox, switch to ``profile``, sync every export resource with Airflow-like retries.

    :param rate_per_second: the connection's ``rate_limit_per_second`` (default: ServiceTitan's 60).
    """
    sandbox.admin.reset()
    sandbox.admin.set_faults(profile, **knobs)
    credentials = sandbox.credentials()
    resources = list(EXPORTABLE_RESOURCES)
    attempts = failed = 0
    kind = "none"
    failures: list[str] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_namespace(redis_url, "faults") as (shared, namespace),
        SyncStore(f"sqlite:///{Path(tmp) / 'faults.db'}") as store,
    ):
        store.create_tables()
        started = time.perf_counter()
        while attempts < MAX_ATTEMPTS:
            attempts += 1
            # A task try: a new process, a new client.
            factory = Factory(credentials, shared, namespace, rate_per_second=rate_per_second)
            try:
                outcome = sync_credential(factory, store, credential="bench", run_id="bench", resources=resources)
            finally:
                factory.close()
            kind = outcome.kind
            if kind == "ok":
                break
            failed += 1
            failures.append(_failure(outcome))
            if kind in ("needs_attention", "skipped_known_bad"):
                break  # the operator fails such a task without retries
            time.sleep(min(MAX_PAUSE, outcome.held_back_for or PAUSE))
        seconds = time.perf_counter() - started
        # The admin API is never faulted: the truth is read as it is.
        problems = truth_mismatch(sandbox, store, credentials.tenant_id, resources)
    stats = sandbox.admin.stats()
    return Outcome(
        seconds=seconds,
        attempts=attempts,
        failed=failed,
        api_requests=int(stats["requests_total"]) - int(stats["token_requests_total"]),
        answered_429=int(stats["responses_429"]),
        faults=sum(int(n) for kind, n in stats["faults_injected"].items() if kind != "latency"),
        problems=problems,
        last_kind=kind,
        failures=failures,
    )


def _median_run(runs: Sequence[Outcome]) -> Outcome:
    """The run of median wall time (the upper one of an even count), ``ok`` only if every run was."""
    ordered = sorted(runs, key=lambda run: run.seconds)
    chosen = ordered[len(ordered) // 2]
    problems = {key: value for run in runs for key, value in run.problems.items()}
    return replace(chosen, problems=problems)


def _failure(outcome: CredentialOutcome) -> str:
    """Why an attempt did not end ok: the error's root cause and the pause it asked for."""
    cause = type(root_cause(outcome.error)).__name__ if outcome.error is not None else outcome.kind
    wait = outcome.held_back_for
    return f"{cause} (waits {wait:.0f} s)" if wait is not None else cause


def measure(options: BenchOptions) -> list[Row]:
    records = 1_000 if options.quick else 2_000
    seeds = range(1, 3) if options.quick else range(1, 6)
    size = f"{len(EXPORTABLE_RESOURCES)} resources x {records} records, page {PAGE_SIZE}"
    timed_size = f"{size}, {BASE_LATENCY * 1000:g} ms base latency, median of {options.repeats} syncs (fault seeds)"
    rows: list[Row] = []
    with SandboxProcess(records=records, export_page_size=PAGE_SIZE, rate_limit=60, token_rate_limit=30) as sandbox:

        def runs_of(profile: str, knobs: dict[str, Any]) -> list[Outcome]:
            """``options.repeats`` full syncs, fault seeds 1, 2, ...: other faults in each."""
            return [
                full_sync(sandbox, options.redis_url, profile, {**knobs, "fault_seed": seed})
                for seed in range(1, options.repeats + 1)
            ]

        baseline = _median_run(runs_of("none", {"latency": BASE_LATENCY}))
        for profile, knobs in COMPARED.items():
            runs = runs_of(profile, {**knobs, "latency": BASE_LATENCY})
            result = _median_run(runs)
            jitter = PROFILES[profile].latency_jitter
            if jitter:
                # The profile also slows every answer down (by jitter / 2 on average): the same sync
                # with that mean latency and no fault shows what the faults alone cost.
                slower = _median_run(runs_of("none", {"latency": BASE_LATENCY + jitter / 2}))
                rows.append(
                    Row(
                        GROUP,
                        f"full sync wall, {profile}, against the same mean latency",
                        result.seconds,
                        slower.seconds,
                        f"profile none, {(BASE_LATENCY + jitter / 2) * 1000:g} ms latency",
                        "s",
                        ok=result.ok and slower.ok,
                        note=f"{size}, median of {options.repeats} syncs; {profile} adds up to "
                        f"{jitter * 1000:g} ms to every answer; none: {slower.describe()}",
                    )
                )
            changed = f" ({', '.join(f'{k}={v:g}' for k, v in knobs.items())})" if knobs else ""
            rows.append(
                Row(
                    GROUP,
                    f"full sync wall, {profile}{changed}",
                    result.seconds,
                    baseline.seconds,
                    "same sync, profile none",
                    "s",
                    ok=result.ok and baseline.ok,
                    note=f"{timed_size}; {result.describe()}; none: {baseline.describe()}",
                )
            )
            rows.append(
                Row(
                    GROUP,
                    f"failed sync attempts, {profile}",
                    sum(run.failed for run in runs),
                    sum(run.attempts for run in runs),
                    "sync attempts",
                    "failed/attempts",
                    ok=result.ok,
                    note=f"{len(runs)} syncs of up to {MAX_ATTEMPTS} attempts like Airflow retries=3; target 0 failed",
                )
            )
        limit = PROFILES["ratelimited"].rate_limit or 1
        # The tenant's limit told to the connection (rate_limit_per_second), as a user whose tenant
        # has a lower limit sets it; then left at ServiceTitan's published 60/s for comparison.
        sweeps = {
            f"rate_limit_per_second={limit}": [
                full_sync(sandbox, options.redis_url, "ratelimited", {"fault_seed": seed}, limit) for seed in seeds
            ],
            "rate_limit_per_second left at 60": [
                full_sync(sandbox, options.redis_url, "ratelimited", {"fault_seed": seed}) for seed in seeds
            ],
        }
    for setting, sweep in sweeps.items():
        rows += _sweep_rows(sweep, seeds, limit, size, setting)
    return rows


def _sweep_rows(sweep: list[Outcome], seeds: Sequence[int], limit: int, size: str, setting: str) -> list[Row]:
    """Failed sync attempts and wall time against the rate-limit bound, over the seeds of one setting."""
    ok = all(result.ok for result in sweep)
    failures = "; ".join(f"seed {seed}: {r.describe()}" for seed, r in zip(seeds, sweep, strict=True) if not r.ok)
    bound = sum(max(0, r.api_requests - r.answered_429 - limit) / limit for r in sweep)
    label = f"ratelimited x {len(sweep)} seeds, {setting}"
    return [
        Row(
            GROUP,
            f"{label}: failed sync attempts",
            sum(r.failed for r in sweep),
            sum(r.attempts for r in sweep),
            "sync attempts",
            "failed/attempts",
            ok=ok,
            note=f"{size}; default profile ({limit}/s, 429 bursts), default retries; target 0 failed"
            + (f"; {failures}" if failures else ""),
        ),
        Row(
            GROUP,
            f"{label}: wall vs rate-limit bound",
            sum(r.seconds for r in sweep),
            bound,
            f"(requests - 429s - {limit}) / {limit}/s",
            "s",
            ok=ok,
            note=(
                f"sums over seeds; {sum(r.api_requests for r in sweep)} requests, "
                f"{sum(r.answered_429 for r in sweep)} x 429; a ratio near 1 = the limit is used fully"
            ),
        ),
    ]
