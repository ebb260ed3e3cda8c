"""Real worker processes racing for the same Redis breaker.

Coordination is by multiprocessing primitives, never by sleeping: the workers start together at
a barrier, report to the parent through a queue, and admitted probes wait on an event the parent
sets once every worker has attempted its call. Workers are spawned (not forked) so that each has
its own interpreter and Redis connections, as Airflow workers do. Every breaker runs on an
injected clock (the workers' is frozen just past the open period), so the times are exact.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import pytest
import redis

from airflow_provider_servicetitan.errors import CircuitBreakerOpenError
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, BreakerTransition, CircuitBreaker

from .test_breaker import Clock, Service, attempt, refusal

SPAWN = multiprocessing.get_context("spawn")
WORKERS = 16
OPEN_SECONDS = 30.0
HALF_OPEN_AT = Clock.START + OPEN_SECONDS + 1  # the time at which the workers call
STILL_OPEN_AT = Clock.START + 1  # ... when each first requests a probe (a person cleared the task)
TIMEOUT = 60


def _worker_breaker(
    redis_url: str, namespace: str, config: BreakerConfig, now: float, seen: list[BreakerTransition]
) -> CircuitBreaker:
    return CircuitBreaker(
        "shared",
        redis.Redis.from_url(redis_url, socket_timeout=10),
        config,
        namespace=namespace,
        listeners=[seen.append],
        clock=lambda: now,
    )


def racing_worker(
    redis_url: str,
    namespace: str,
    config: BreakerConfig,
    barrier: Barrier,
    release: Event,
    reports: Queue[Any],
    request_probe: bool,
) -> None:
    """Call the breaker as soon as all workers are ready (after requesting a probe, if asked to);
    an admitted probe holds its lease until the parent releases it, then succeeds."""
    seen: list[BreakerTransition] = []
    breaker = _worker_breaker(redis_url, namespace, config, STILL_OPEN_AT if request_probe else HALF_OPEN_AT, seen)

    def probe() -> None:
        reports.put(("entered", None))
        if not release.wait(TIMEOUT):
            raise TimeoutError("the parent never released the probes")

    barrier.wait(TIMEOUT)
    if request_probe:
        breaker.request_probe()
    try:
        breaker.call(probe)
    except CircuitBreakerOpenError as refused:
        reports.put(("refused", refused.retry_after))
    reports.put(("transitions", [(t.from_state.value, t.to_state.value, t.reason) for t in seen]))


def stuck_probe_worker(redis_url: str, namespace: str, config: BreakerConfig, reports: Queue[Any]) -> None:
    """Take the probe and never come back (the parent kills this process inside the probe)."""
    breaker = _worker_breaker(redis_url, namespace, config, HALF_OPEN_AT, [])

    def probe() -> None:
        reports.put(("entered", os.getpid()))
        threading.Event().wait()

    breaker.call(probe)


def _open_breaker(redis_client: redis.Redis, namespace: str, config: BreakerConfig) -> CircuitBreaker:
    """Trip the shared breaker at ``Clock.START``; the returned breaker runs at the workers' time."""
    clock = Clock()
    breaker = CircuitBreaker("shared", redis_client, config, namespace=namespace, clock=clock)
    attempt(breaker, Service().fail)
    assert breaker.state == "open"
    clock.now = HALF_OPEN_AT
    return breaker


@pytest.mark.slow
@pytest.mark.parametrize("max_probes", [1, 3])
@pytest.mark.parametrize("half_opened_by", ["open_timeout", "probe_requested"])
def test_sixteen_processes_at_the_moment_it_half_opens_admit_exactly_max_probes(
    redis_url: str, redis_client: redis.Redis, key_prefix: str, max_probes: int, half_opened_by: str
) -> None:
    """Half-opened by the end of the open period, or by every worker requesting a probe first."""
    config = BreakerConfig(
        failure_threshold=1, open_seconds=OPEN_SECONDS, half_open_max_calls=max_probes, probe_lease_seconds=60
    )
    breaker = _open_breaker(redis_client, key_prefix, config)
    barrier, release, reports = SPAWN.Barrier(WORKERS), SPAWN.Event(), SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=racing_worker,
            args=(redis_url, key_prefix, config, barrier, release, reports, half_opened_by == "probe_requested"),
        )
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    try:
        attempts: list[tuple[str, Any]] = []
        transitions: list[list[tuple[str, str, str]]] = []  # one report per worker, at its end

        def collect_until(done: Callable[[], bool]) -> None:
            while not done():
                kind, payload = reports.get(timeout=TIMEOUT)
                if kind == "transitions":
                    transitions.append(payload)
                else:
                    attempts.append((kind, payload))

        collect_until(lambda: len(attempts) == WORKERS)  # every worker entered its probe or was refused
        release.set()
        collect_until(lambda: len(transitions) == WORKERS)
        entered = [payload for kind, payload in attempts if kind == "entered"]
        refused = [payload for kind, payload in attempts if kind == "refused"]
        for worker in workers:
            worker.join(TIMEOUT)
            assert worker.exitcode == 0
    finally:
        release.set()
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    assert len(entered) == max_probes
    assert len(refused) == WORKERS - max_probes
    assert refused == [60.0] * (WORKERS - max_probes)  # until the first lease, taken at the same time, expires
    assert Counter(t for report in transitions for t in report) == {
        ("open", "half_open", half_opened_by): 1,
        ("half_open", "closed", "probe_succeeded"): 1,
    }
    assert breaker.state == "closed"


@pytest.mark.slow
def test_a_probe_killed_mid_call_blocks_probes_only_until_its_lease_expires(
    redis_url: str, redis_client: redis.Redis, key_prefix: str
) -> None:
    lease = 20.0
    config = BreakerConfig(failure_threshold=1, open_seconds=OPEN_SECONDS, probe_lease_seconds=lease)
    breaker = _open_breaker(redis_client, key_prefix, config)
    reports = SPAWN.Queue()
    worker = SPAWN.Process(target=stuck_probe_worker, args=(redis_url, key_prefix, config, reports))
    worker.start()
    try:
        assert reports.get(timeout=TIMEOUT) == ("entered", worker.pid)
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(TIMEOUT)
    finally:
        if worker.is_alive():
            worker.kill()
    assert worker.exitcode == -signal.SIGKILL

    clock = Clock(HALF_OPEN_AT)
    survivor = CircuitBreaker("shared", redis_client, config, namespace=key_prefix, clock=clock)
    assert survivor.state == "half_open"
    assert refusal(survivor).retry_after == lease
    clock.advance(lease / 2)
    assert refusal(survivor).retry_after == lease / 2
    clock.advance(lease / 2)
    service = Service()
    assert survivor.call(service.ok) == "ok"
    assert service.calls == 1
    assert survivor.state == breaker.state == "closed"
