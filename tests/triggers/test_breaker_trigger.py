"""BreakerProbeTrigger against a real CircuitBreaker in the real Redis.

The trigger's ``run()`` is driven directly with ``asyncio.run``, as the triggerer would. Whether it
fires is never judged by sleeping: a subclass records each look the trigger takes at the breaker
(the real lookup, unchanged) and sets an event, so a test can wait for "three looks, each saying
open" and then act between two looks, while the trigger sleeps. The breakers run on the Redis
clock, as in production; every wait below is bounded by ``LIMIT`` only as a safety net.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any, cast
from urllib.parse import urlparse

import pytest
import redis
import redis.asyncio
from airflow.models.trigger import Trigger
from airflow.triggers.base import TriggerEvent

from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker
from airflow_provider_servicetitan.triggers.breaker import BreakerProbeTrigger
from tests.helpers import set_connection
from tests.redis_outage import SwitchableProxy, redis_db
from tests.resilience.test_shared_state import acl_user  # noqa: F401 - a fixture, shared

LIMIT = 30.0  # safety net for every wait: a broken trigger fails the test instead of hanging it
# Long enough that the first look comes before it ends, even on a loaded machine; LIMIT is far longer.
SHORT_WAIT = 5.0
POLL = 0.02


class Observed(BreakerProbeTrigger):
    """The trigger, recording each look it takes (time left, state) and signalling it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.looks: list[tuple[float, str | None]] = []
        self.looked = asyncio.Event()

    async def _time_left(self, client: redis.asyncio.Redis | None) -> tuple[float, str | None]:
        look = await super()._time_left(client)
        self.looks.append(look)
        self.looked.set()
        return look

    async def wait_for_looks(self, count: int) -> None:
        while len(self.looks) < count:
            self.looked.clear()
            await asyncio.wait_for(self.looked.wait(), LIMIT)


async def next_event(events: AsyncIterator[TriggerEvent]) -> dict[str, Any]:
    event = await asyncio.wait_for(anext(events), LIMIT)
    payload: dict[str, Any] = event.payload
    json.dumps(payload)  # an event payload must be plain JSON
    return payload


def events_of(trigger: BreakerProbeTrigger) -> AsyncGenerator[TriggerEvent, None]:
    return cast(AsyncGenerator[TriggerEvent, None], trigger.run())


def run_until_event(trigger: BreakerProbeTrigger) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        events = events_of(trigger)
        try:
            return await next_event(events)
        finally:
            await events.aclose()

    return asyncio.run(main())


def run_with(trigger: Observed, act: Callable[[asyncio.Task[dict[str, Any]]], Coroutine[Any, Any, None]]) -> Any:
    """Run the trigger in a task while ``act(task)`` watches and changes the breaker; the first event."""

    async def main() -> dict[str, Any]:
        events = events_of(trigger)
        task = asyncio.create_task(next_event(events))
        try:
            await act(task)
            return await task
        finally:
            task.cancel()
            await events.aclose()

    return asyncio.run(main())


@pytest.fixture
def make_breaker(redis_client: redis.Redis, key_prefix: str) -> Callable[..., CircuitBreaker]:
    """A breaker on the real Redis and its clock (no injected clock: the trigger reads Redis TIME)."""

    def make(**config: Any) -> CircuitBreaker:
        settings = {"open_seconds": 3600.0, "max_open_seconds": 3600.0, "probe_lease_seconds": 600.0, **config}
        return CircuitBreaker(
            f"api-{uuid.uuid4().hex[:8]}", redis_client, BreakerConfig(**settings), namespace=key_prefix
        )

    return make


def watching(breaker: CircuitBreaker, conn_id: str, **kwargs: Any) -> Observed:
    state_key, _calls, _failures, probes_key = breaker.redis_keys
    settings: dict[str, Any] = {
        "redis_conn_id": conn_id,
        "state_key": state_key,
        "probes_key": probes_key,
        "half_open_max_calls": breaker.config.half_open_max_calls,
        "poll_interval": POLL,
        **kwargs,
    }
    return Observed(**settings)


# --- fires when a call would be admitted ---------------------------------------------------


def test_fires_at_once_for_a_breaker_without_keys_and_for_a_closed_one(
    make_breaker: Callable[..., CircuitBreaker], redis_connection: str, redis_client: redis.Redis
) -> None:
    breaker = make_breaker()
    assert redis_client.exists(*breaker.redis_keys) == 0  # never used, or expired
    fresh = watching(breaker, redis_connection)
    assert run_until_event(fresh) == {"status": "ready", "state": "closed"}
    assert len(fresh.looks) == 1

    breaker.force_open(60)
    breaker.reset()
    assert redis_client.hget(breaker.redis_keys[0], "state") == b"closed"
    closed = watching(breaker, redis_connection)
    assert run_until_event(closed) == {"status": "ready", "state": "closed"}
    assert len(closed.looks) == 1


@pytest.mark.parametrize("action", ["reset", "request_probe"])
def test_waits_while_open_and_fires_within_one_poll_of_a_reset_or_a_probe_request(
    make_breaker: Callable[..., CircuitBreaker], redis_connection: str, action: str
) -> None:
    breaker = make_breaker()
    breaker.force_open(3600)
    trigger = watching(breaker, redis_connection)

    async def act(task: asyncio.Task[dict[str, Any]]) -> None:
        await trigger.wait_for_looks(3)
        assert not task.done()  # three looks said "open": no event
        assert all(state == "open" and left > 3000 for left, state in trigger.looks)
        # The trigger is asleep between two looks: the person acts now (a blocking call, on purpose).
        looks_before = len(trigger.looks)
        getattr(breaker, action)()
        await asyncio.wait_for(asyncio.shield(task), LIMIT)
        assert len(trigger.looks) == looks_before + 1  # the next look saw it

    expected_state = "closed" if action == "reset" else "half_open"
    assert run_with(trigger, act) == {"status": "ready", "state": expected_state}


def test_fires_when_the_open_period_ends_without_sleeping_a_whole_poll(
    make_breaker: Callable[..., CircuitBreaker], redis_connection: str
) -> None:
    breaker = make_breaker()
    breaker.force_open(SHORT_WAIT)
    trigger = watching(breaker, redis_connection, poll_interval=3600.0)  # a whole poll would outlast LIMIT

    assert run_until_event(trigger) == {"status": "ready", "state": "open"}  # open_until passed: a probe is due
    assert len(trigger.looks) >= 2
    assert all(state == "open" for _left, state in trigger.looks)
    assert 0 < trigger.looks[0][0] <= SHORT_WAIT


def test_half_open_with_every_probe_slot_taken_waits_for_the_probe(
    make_breaker: Callable[..., CircuitBreaker], redis_connection: str
) -> None:
    breaker = make_breaker(half_open_max_calls=2)
    breaker.force_open(3600)
    assert breaker.request_probe() == "half_open"
    probes = [breaker.acquire(), breaker.acquire()]  # two workers probing
    trigger = watching(breaker, redis_connection)

    async def act(task: asyncio.Task[dict[str, Any]]) -> None:
        await trigger.wait_for_looks(3)
        assert not task.done()
        assert all(state == "half_open" and 500 < left <= 600 for left, state in trigger.looks)  # the leases
        probes[0].release()  # one slot frees: a resumed task could probe

    assert run_with(trigger, act) == {"status": "ready", "state": "half_open"}
    probes[1].success()


# --- a long requested wait, without a breaker -----------------------------------------------


def test_not_before_alone_waits_for_that_time_without_redis() -> None:
    past = Observed(not_before=time.time() - 1, poll_interval=POLL)
    assert run_until_event(past) == {"status": "ready", "state": None}

    soon = Observed(not_before=time.time() + SHORT_WAIT, poll_interval=3600.0)
    assert run_until_event(soon) == {"status": "ready", "state": None}
    assert soon.looks[0][0] > 0  # it did wait, for the time left and not a whole poll


def test_not_before_and_a_closed_breaker_wait_for_both(
    make_breaker: Callable[..., CircuitBreaker], redis_connection: str
) -> None:
    trigger = watching(make_breaker(), redis_connection, not_before=time.time() + SHORT_WAIT)
    assert run_until_event(trigger) == {"status": "ready", "state": "closed"}
    assert trigger.looks[0][0] > 0


# --- Redis unreachable ----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_redis_gives_the_task_back_after_the_bound(
    make_breaker: Callable[..., CircuitBreaker], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, "st_dead_redis", conn_type="redis", host="127.0.0.1", port=closed_port())
    breaker = make_breaker()
    trigger = watching(breaker, "st_dead_redis", redis_unavailable_timeout=POLL)

    assert run_until_event(trigger) == {"status": "redis_unavailable", "error": "ConnectionError"}
    assert trigger.looks == []  # no look succeeded


def test_an_outage_shorter_than_the_bound_is_waited_out_one_poll_at_a_time(
    make_breaker: Callable[..., CircuitBreaker],
    monkeypatch: pytest.MonkeyPatch,
    proxy: SwitchableProxy,
    redis_url: str,
) -> None:
    extra = {"db": redis_db(redis_url)}
    set_connection(monkeypatch, "st_proxy_redis", conn_type="redis", host="127.0.0.1", port=proxy.port, extra=extra)
    breaker = make_breaker()
    breaker.force_open(3600)
    trigger = watching(breaker, "st_proxy_redis", redis_unavailable_timeout=3600.0)
    proxy.switch(up=False)

    async def act(task: asyncio.Task[dict[str, Any]]) -> None:
        async def attempts(count: int) -> None:
            while proxy.connections < count:
                await asyncio.sleep(POLL)

        await asyncio.wait_for(attempts(4), LIMIT)  # it keeps trying, once per poll
        assert not task.done()
        assert trigger.looks == []
        proxy.switch(up=True)
        await trigger.wait_for_looks(1)
        assert trigger.looks[0][1] == "open"
        breaker.reset()

    assert run_with(trigger, act) == {"status": "ready", "state": "closed"}


# --- kwargs: round trip, no secret ----------------------------------------------------------


@pytest.fixture
def password_connection(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, request: pytest.FixtureRequest
) -> tuple[str, str]:
    """An Airflow connection to a Redis user with a password (``acl_user``), allowed the test's keys only."""
    username, password = request.getfixturevalue("acl_user")
    parsed = urlparse(redis_url)
    set_connection(
        monkeypatch,
        "st_secret_redis",
        conn_type="redis",
        host=parsed.hostname,
        port=parsed.port,
        login=username,
        password=password,
        extra={"db": redis_db(redis_url)},
    )
    return "st_secret_redis", password


def test_kwargs_round_trip_through_the_metadata_db_encoding(make_breaker: Callable[..., CircuitBreaker]) -> None:
    breaker = make_breaker(half_open_max_calls=3)
    trigger = BreakerProbeTrigger.for_breaker(
        breaker, "st_test_redis", not_before=1_800_000_000.5, poll_interval=2.5, redis_unavailable_timeout=90.0
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_servicetitan.triggers.breaker.BreakerProbeTrigger"
    assert kwargs == {
        "redis_conn_id": "st_test_redis",
        "state_key": breaker.redis_keys[0],
        "probes_key": breaker.redis_keys[3],
        "half_open_max_calls": 3,
        "not_before": 1_800_000_000.5,
        "poll_interval": 2.5,
        "redis_unavailable_timeout": 90.0,
    }
    row = Trigger.from_object(trigger)  # what a deferring task stores, encrypted
    module, _, name = row.classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**row.kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_no_secret_in_the_kwargs_and_the_password_is_read_in_the_triggerer(
    make_breaker: Callable[..., CircuitBreaker], password_connection: tuple[str, str]
) -> None:
    conn_id, password = password_connection
    breaker = make_breaker()
    trigger = BreakerProbeTrigger.for_breaker(breaker, conn_id, poll_interval=POLL)

    stored = json.dumps(trigger.serialize())
    assert password not in stored
    assert password not in repr(trigger)
    assert "redis://" not in stored
    event = run_until_event(trigger)  # authenticated with the connection's user and password
    assert event == {"status": "ready", "state": "closed"}
    assert password not in json.dumps(event)


def test_for_breaker_needs_a_shared_breaker() -> None:
    with pytest.raises(ValueError, match="no Redis state to watch"):
        BreakerProbeTrigger.for_breaker(CircuitBreaker("local-only", None), "st_test_redis")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give a breaker to watch"),
        ({"redis_conn_id": "r", "state_key": "s"}, "together"),
        ({"state_key": "s", "probes_key": "p"}, "together"),
        ({"not_before": float("nan")}, "not_before"),
        ({"not_before": 1.0, "poll_interval": 0}, "poll_interval"),
        ({"not_before": 1.0, "half_open_max_calls": 0}, "half_open_max_calls"),
        ({"not_before": 1.0, "redis_unavailable_timeout": -1}, "redis_unavailable_timeout"),
    ],
)
def test_invalid_kwargs_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BreakerProbeTrigger(**kwargs)
