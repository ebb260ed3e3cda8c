"""What a guarded call costs: our Redis circuit breaker beside pybreaker's ``CircuitRedisStorage``.

Both run against the same Redis (``options.redis_url``, db 7 by default), in the same run:

* Redis commands per guarded call, closed state, successful and failing calls: ``INFO
  commandstats`` deltas (every command the server ran, those inside our Lua script included, and
  the ``EVALSHA`` itself; ``INFO`` excluded). ``commandstats`` is server-wide, so another client
  can only add to a count: the smallest count of ``repeats`` runs is reported.
* Latency of one guarded call in the closed state (p50, p99 and mean, in µs), successful and
  failing calls, timed one by one with ``perf_counter_ns``: blocks of calls alternate between ours
  and pybreaker, ``repeats`` times, and each figure is the median over the blocks. Our breaker
  buffers successes and admits from the state learned in its last round trip, so most calls make
  no round trip and one in ``success_batch_size`` makes one: the mean is the amortised cost.
* The half-open herd: 16 processes call a breaker whose open period is over, at once (a barrier);
  each admitted call holds on until all have tried. How many got through as probes (ours admits
  ``half_open_max_calls`` = 1).

Failing calls use a configuration that never opens (huge thresholds), so every call is measured
in the closed state. Keys live under a fresh namespace and are deleted afterwards (never FLUSHDB).

    .venv/bin/python benchmarks/breaker_cost.py [--redis-url redis://127.0.0.1:6379/7] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pybreaker
import redis

try:
    from benchmarks.table import BenchOptions, Row
except ImportError:  # run as a script: benchmarks/ is on sys.path, the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.table import BenchOptions, Row

from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker

GROUP = "breaker"
PEER = "pybreaker CircuitRedisStorage"
HERD = 16
NEVER = 10**9  # thresholds that no run reaches: failing calls stay in the closed state
HERD_TIMEOUT = 60.0


class Boom(Exception):
    """The failure of a failing call."""


def ok() -> None:
    return None


def fail() -> None:
    raise Boom


@dataclass(frozen=True)
class Subject:
    """One breaker under test: how to make a guarded call, and what to do after a run."""

    call: Callable[[Callable[[], None]], None]
    finish: Callable[[], None]


def _ours(client: redis.Redis, namespace: str, *, failing: bool) -> Subject:
    config = BreakerConfig(failure_threshold=NEVER, minimum_calls=NEVER) if failing else BreakerConfig()
    breaker = CircuitBreaker(f"cost-{uuid.uuid4().hex[:8]}", client, config, namespace=namespace)

    def call(fn: Callable[[], None]) -> None:
        with contextlib.suppress(Boom):
            breaker.call(fn)

    return Subject(call, breaker.flush)


def _pybreaker(client: redis.Redis, namespace: str) -> Subject:
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace=f"{namespace}:py-{uuid.uuid4().hex[:8]}"
    )
    breaker = pybreaker.CircuitBreaker(fail_max=NEVER, reset_timeout=60, state_storage=storage)

    def call(fn: Callable[[], None]) -> None:
        with contextlib.suppress(Boom):
            breaker.call(fn)

    return Subject(call, lambda: None)


def _commands_run(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(entry["calls"]) for name, entry in stats.items() if name != "cmdstat_info")


def commands_per_call(client: redis.Redis, subject: Subject, fn: Callable[[], None], calls: int) -> float:
    """Commands the server ran per guarded call over ``calls`` calls (and the final flush)."""
    subject.call(fn)  # warm: script loaded, state learned
    subject.finish()
    before = _commands_run(client)
    for _ in range(calls):
        subject.call(fn)
    subject.finish()
    return (_commands_run(client) - before) / calls


def _timed_block(subject: Subject, fn: Callable[[], None], calls: int) -> tuple[float, float, float]:
    """p50, p99 and mean of ``calls`` guarded calls, in µs."""
    timings: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        started = clock()
        subject.call(fn)
        timings.append(clock() - started)
    subject.finish()
    timings.sort()
    p50 = timings[len(timings) // 2]
    p99 = timings[min(len(timings) - 1, (len(timings) * 99) // 100)]
    return p50 / 1000, p99 / 1000, statistics.fmean(timings) / 1000


def latencies(
    ours: Subject, peer: Subject, fn: Callable[[], None], calls: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Median over ``repeats`` alternated blocks of (p50, p99, mean) for ours and the peer."""
    for subject in (ours, peer):  # warm both
        for _ in range(200):
            subject.call(fn)
        subject.finish()
    ours_blocks: list[tuple[float, float, float]] = []
    peer_blocks: list[tuple[float, float, float]] = []
    for repeat in range(repeats):
        order = [(ours, ours_blocks), (peer, peer_blocks)]
        if repeat % 2:
            order.reverse()
        for subject, blocks in order:
            blocks.append(_timed_block(subject, fn, calls))
    return (
        [statistics.median(block[i] for block in ours_blocks) for i in range(3)],
        [statistics.median(block[i] for block in peer_blocks) for i in range(3)],
    )


# --- the half-open herd ----------------------------------------------------------------------


def _probe(reports: Any, release: Any) -> None:
    reports.put("entered")
    if not release.wait(HERD_TIMEOUT):
        raise TimeoutError("the parent never released the probes")


def _ours_herd_worker(redis_url: str, namespace: str, name: str, barrier: Any, release: Any, reports: Any) -> None:
    config = BreakerConfig(failure_threshold=1, open_seconds=0.05, probe_lease_seconds=60)
    breaker = CircuitBreaker(name, redis.Redis.from_url(redis_url), config, namespace=namespace)
    barrier.wait(HERD_TIMEOUT)
    try:
        breaker.call(_probe, reports, release)
    except Exception:  # refused: CircuitBreakerOpenError
        reports.put("refused")


def _peer_herd_worker(redis_url: str, namespace: str, barrier: Any, release: Any, reports: Any) -> None:
    client = redis.Redis.from_url(redis_url)
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_OPEN, client, namespace=namespace)
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=1, state_storage=storage)
    barrier.wait(HERD_TIMEOUT)
    try:
        breaker.call(_probe, reports, release)
    except pybreaker.CircuitBreakerError:
        reports.put("refused")


def _herd(target: Callable[..., None], args: tuple[Any, ...], ready: Callable[[], None]) -> int:
    """Start ``HERD`` processes on ``target``; once all wait at the barrier, ``ready()`` runs, then
    they call. Returns how many were let through."""
    spawn = multiprocessing.get_context("spawn")
    barrier, release, reports = spawn.Barrier(HERD + 1), spawn.Event(), spawn.Queue()
    workers = [spawn.Process(target=target, args=(*args, barrier, release, reports)) for _ in range(HERD)]
    for worker in workers:
        worker.start()
    try:
        ready()
        barrier.wait(HERD_TIMEOUT)
        outcomes = [reports.get(timeout=HERD_TIMEOUT) for _ in range(HERD)]
        release.set()
        for worker in workers:
            worker.join(HERD_TIMEOUT)
    finally:
        release.set()
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    return outcomes.count("entered")


def herd(client: redis.Redis, redis_url: str, namespace: str) -> tuple[int, int]:
    """Processes of ``HERD`` let through at the moment the breaker half-opens: ours, pybreaker."""
    name = f"herd-{uuid.uuid4().hex[:8]}"
    opener = CircuitBreaker(name, client, BreakerConfig(failure_threshold=1), namespace=namespace)

    def open_ours() -> None:
        # Open for 50 ms on the Redis clock, and let the workers go once that is over.
        opener.force_open(0.05)
        started = client.time()
        while True:
            seconds, micros = client.time()
            if (seconds - started[0]) + (micros - started[1]) / 1e6 > 0.1:
                return

    ours = _herd(_ours_herd_worker, (redis_url, namespace, name), open_ours)

    peer_namespace = f"{namespace}:py-herd"

    def open_peer() -> None:
        # pybreaker's state: open since long enough ago that its reset timeout (1 s) is over.
        client.set(f"{peer_namespace}:pybreaker:state", pybreaker.STATE_OPEN)
        client.set(f"{peer_namespace}:pybreaker:opened_at", int(time.time()) - 5)

    peer = _herd(_peer_herd_worker, (redis_url, peer_namespace), open_peer)
    return ours, peer


# --- the rows --------------------------------------------------------------------------------


def measure(options: BenchOptions) -> list[Row]:
    client = redis.Redis.from_url(options.redis_url)
    namespace = f"bench-breaker-{uuid.uuid4().hex[:8]}"
    repeats = max(1, options.repeats)
    count_calls = 500 if options.quick else 2000
    block = 1000 if options.quick else 5000
    rows: list[Row] = []
    try:
        for label, fn, failing in (("successful", ok, False), ("failing", fail, True)):
            ours_cmds = min(
                commands_per_call(client, _ours(client, namespace, failing=failing), fn, count_calls)
                for _ in range(repeats)
            )
            peer_cmds = min(
                commands_per_call(client, _pybreaker(client, namespace), fn, count_calls) for _ in range(repeats)
            )
            rows.append(
                Row(
                    GROUP,
                    f"Redis commands per {label} call (closed)",
                    ours_cmds,
                    peer_cmds,
                    PEER,
                    "commands",
                    note=f"INFO commandstats delta over {count_calls} calls, min of {repeats}",
                )
            )
            ours_t, peer_t = latencies(
                _ours(client, namespace, failing=failing), _pybreaker(client, namespace), fn, block, repeats
            )
            for i, figure in enumerate(("p50", "p99", "mean")):
                rows.append(
                    Row(
                        GROUP,
                        f"{figure} per {label} call (closed)",
                        ours_t[i],
                        peer_t[i],
                        PEER,
                        "µs",
                        note=f"median of {repeats} alternated blocks of {block} calls",
                    )
                )
        ours_through, peer_through = herd(client, options.redis_url, namespace)
        rows.append(
            Row(
                GROUP,
                f"processes of {HERD} let through when it half-opens",
                ours_through,
                peer_through,
                PEER,
                "processes",
                ok=ours_through == 1,
                note="half_open_max_calls=1; admitted calls hold on until all tried",
            )
        )
    finally:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchOptions()
    parser.add_argument("--redis-url", default=defaults.redis_url)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    options = BenchOptions(redis_url=args.redis_url, repeats=args.repeats, quick=args.quick)
    for row in measure(options):
        status = "" if row.ok else "  WRONG"
        print(
            f"{row.group:8s} {row.metric:48s} ours={row.ours:10.2f} {row.peer_name}={row.peer:10.2f} "
            f"{row.unit:9s} ratio={row.ratio:6.2f}  ({row.note}){status}"
        )


if __name__ == "__main__":
    main()
