"""Deduplication through the real Redis: one claim per incident and window, across clients."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from airflow_provider_servicetitan.notifications.dedup import AlertDeduplicator
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS
from tests.helpers import FakeClock
from tests.redis_outage import SwitchableProxy, default_client

from .servers import closed_port

DEDUP_LOGGER = "airflow_provider_servicetitan.notifications.dedup"

INCIDENT = "servicetitan_acme|retries_exhausted|ServiceTitanServerError"
CRED = "servicetitan_acme"


@pytest.fixture
def make_dedup(redis_url: str, key_prefix: str) -> Callable[..., AlertDeduplicator]:
    """A deduplicator with a client of its own, as each worker has."""
    clients: list[redis.Redis] = []

    def make(**kwargs: object) -> AlertDeduplicator:
        client = redis.Redis.from_url(redis_url)
        clients.append(client)
        return AlertDeduplicator(client, namespace=key_prefix, **kwargs)  # type: ignore[arg-type]

    yield make
    for client in clients:
        client.close()


def dead_redis() -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=closed_port(),
        socket_connect_timeout=0.2,
        socket_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )


def test_an_incident_is_claimed_once_across_clients(make_dedup) -> None:
    first, second = make_dedup(), make_dedup()

    assert first.first_in_window(INCIDENT)
    assert not second.first_in_window(INCIDENT)
    assert not first.first_in_window(INCIDENT)
    assert second.first_in_window(INCIDENT.replace("ServiceTitanServerError", "ServiceTitanTimeoutError"))


def test_racing_threads_claim_an_incident_exactly_once(make_dedup) -> None:
    dedups = [make_dedup() for _ in range(16)]
    barrier = threading.Barrier(len(dedups))
    claims: list[bool] = []

    def claim(dedup: AlertDeduplicator) -> None:
        barrier.wait(30)
        claims.append(dedup.first_in_window(INCIDENT))

    threads = [threading.Thread(target=claim, args=(dedup,)) for dedup in dedups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(claims) == [False] * 15 + [True]


def redis_now_ms(client: redis.Redis) -> int:
    seconds, microseconds = client.time()
    return seconds * 1000 + microseconds // 1000


def test_the_window_is_a_ttl_on_the_claim(make_dedup, redis_client: redis.Redis) -> None:
    dedup = make_dedup(window_seconds=900, open_incident_ttl_seconds=7200)

    before = redis_now_ms(redis_client)
    dedup.first_in_window(INCIDENT, credential=CRED, kind="retries_exhausted")
    after = redis_now_ms(redis_client)

    # Absolute expiry on Redis' own clock, bracketed: however slow the calls, nothing else moves it.
    assert before + 900_000 <= redis_client.pexpiretime(dedup.alert_key(INCIDENT)) <= after + 900_000
    assert before + 7_200_000 <= redis_client.pexpiretime(dedup.open_key(CRED)) <= after + 7_200_000


def test_keys_are_namespaced_and_hold_no_clear_identifier(make_dedup, redis_client: redis.Redis, key_prefix) -> None:
    dedup = make_dedup()

    dedup.first_in_window(INCIDENT, credential=CRED, kind="retries_exhausted")

    keys = sorted(key.decode() for key in redis_client.scan_iter(match=f"{key_prefix}:*"))
    assert keys == sorted([dedup.alert_key(INCIDENT), dedup.open_key(CRED)])
    assert all(CRED not in key and "retries_exhausted" not in key for key in keys)
    assert all(redis_client.pttl(key) > 0 for key in keys)


def test_forget_ends_the_window(make_dedup) -> None:
    dedup = make_dedup()
    assert dedup.first_in_window(INCIDENT)

    dedup.forget(INCIDENT)

    assert dedup.first_in_window(INCIDENT)
    assert not dedup.first_in_window(INCIDENT)


def test_open_incidents_are_closed_once_and_end_their_windows(make_dedup) -> None:
    first, second = make_dedup(), make_dedup()
    assert first.open_incidents(CRED) == []
    first.first_in_window(INCIDENT, credential=CRED, kind="retries_exhausted")
    first.first_in_window(f"{CRED}|circuit_opened|b", credential=CRED, kind="circuit_opened")
    first.first_in_window("other|needs_attention|X", credential="other", kind="needs_attention")

    assert second.open_incidents(CRED) == ["circuit_opened", "retries_exhausted"]
    assert second.close_incidents(CRED, "circuit_opened") == ["circuit_opened"]
    assert first.close_incidents(CRED) == ["retries_exhausted"]
    assert second.close_incidents(CRED) == []
    assert first.open_incidents(CRED) == []
    assert first.open_incidents("other") == ["needs_attention"]
    assert second.first_in_window(INCIDENT)


def test_several_kinds_close_in_one_step_with_their_windows(make_dedup, redis_client) -> None:
    dedup = make_dedup()
    incidents = {
        "retries_exhausted": INCIDENT,
        "circuit_opened": f"{CRED}|circuit_opened|tenant-1",
        "dead_letters_over_threshold": f"{CRED}|dead_letters_over_threshold|",
    }
    for kind, incident in incidents.items():
        assert dedup.first_in_window(incident, credential=CRED, kind=kind)

    closed = make_dedup().close_incidents(CRED, ["retries_exhausted", "circuit_opened", "needs_attention"])

    assert closed == ["circuit_opened", "retries_exhausted"]
    assert dedup.open_incidents(CRED) == ["dead_letters_over_threshold"]
    assert redis_client.exists(dedup.alert_key(incidents["retries_exhausted"])) == 0
    assert redis_client.exists(dedup.alert_key(incidents["circuit_opened"])) == 0
    assert redis_client.exists(dedup.alert_key(incidents["dead_letters_over_threshold"])) == 1
    assert dedup.close_incidents(CRED, []) == [], "no kind named: nothing closed (not all)"
    assert dedup.open_incidents(CRED) == ["dead_letters_over_threshold"]


def test_racing_resolutions_close_an_incident_exactly_once(make_dedup) -> None:
    dedups = [make_dedup() for _ in range(8)]
    dedups[0].first_in_window(INCIDENT, credential=CRED, kind="retries_exhausted")
    barrier = threading.Barrier(len(dedups))
    closed: list[list[str]] = []

    def close(dedup: AlertDeduplicator) -> None:
        barrier.wait(30)
        closed.append(dedup.close_incidents(CRED))

    threads = [threading.Thread(target=close, args=(dedup,)) for dedup in dedups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(closed) == [[]] * 7 + [["retries_exhausted"]]


def test_unreachable_redis_warns_once_and_deduplicates_in_process(caplog) -> None:
    dedup = AlertDeduplicator(dead_redis(), namespace="st")

    with caplog.at_level(logging.WARNING, logger="airflow_provider_servicetitan.notifications.dedup"):
        assert dedup.first_in_window(INCIDENT, credential=CRED, kind="retries_exhausted")
        assert not dedup.first_in_window(INCIDENT, credential=CRED, kind="retries_exhausted")
        assert dedup.first_in_window("another", credential=CRED, kind="circuit_opened")
        assert dedup.open_incidents(CRED) == ["circuit_opened", "retries_exhausted"]
        assert dedup.close_incidents(CRED, "retries_exhausted") == ["retries_exhausted"]
        assert dedup.first_in_window(INCIDENT)
        dedup.first_in_window("a third", credential=CRED, kind="needs_attention")
        assert dedup.close_incidents(CRED, ["circuit_opened", "needs_attention"]) == [
            "circuit_opened",
            "needs_attention",
        ]
        assert dedup.open_incidents(CRED) == []

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Redis unreachable" in warnings[0]


def test_a_redis_outage_costs_one_connection_per_recheck_interval_whatever_the_client(
    proxy: SwitchableProxy, redis_url: str, redis_client: redis.Redis, key_prefix: str, caplog
) -> None:
    caplog.set_level(logging.INFO, logger=DEDUP_LOGGER)
    caller_client = default_client(proxy.port, redis_url)  # redis-py defaults: retries with backoff
    clock = FakeClock()
    dedup = AlertDeduplicator(caller_client, namespace=key_prefix, clock=clock)
    proxy.switch(up=False)

    assert dedup.first_in_window(INCIDENT, credential=CRED, kind="retries_exhausted")
    for _ in range(20):
        assert not dedup.first_in_window(INCIDENT, credential=CRED, kind="retries_exhausted")
        assert dedup.open_incidents(CRED) == ["retries_exhausted"]
    assert proxy.connections == 1  # one attempt, no retries, nothing more within the interval
    clock.advance(DEFAULT_REDIS_RECHECK_SECONDS)
    assert not dedup.first_in_window(INCIDENT)
    assert proxy.connections == 2  # re-checked once, still down

    proxy.switch(up=True)
    clock.advance(DEFAULT_REDIS_RECHECK_SECONDS)
    assert dedup.first_in_window("after the outage", credential=CRED, kind="circuit_opened")
    assert redis_client.exists(dedup.alert_key("after the outage")) == 1  # shared again
    assert not AlertDeduplicator(redis_client, namespace=key_prefix).first_in_window("after the outage")

    proxy.switch(up=False)  # a second outage: a second warning
    assert dedup.first_in_window("during the second outage")

    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == DEDUP_LOGGER]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert "Redis unreachable (ConnectionError" in messages[0][1]
    assert "alerts are deduplicated in this process only" in messages[0][1]
    assert messages[1][1].startswith("alert deduplication: Redis answers again")
    caller_client.close()


def test_without_redis_it_deduplicates_in_process_silently(caplog) -> None:
    dedup = AlertDeduplicator(None, window_seconds=60)

    with caplog.at_level(logging.WARNING):
        assert dedup.first_in_window(INCIDENT)
        assert not dedup.first_in_window(INCIDENT)
        dedup.forget(INCIDENT)
        assert dedup.first_in_window(INCIDENT)

    assert caplog.records == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"namespace": "has space"}, "namespace"),
        ({"window_seconds": 0}, "window_seconds"),
        ({"window_seconds": 60, "open_incident_ttl_seconds": 30}, "open_incident_ttl_seconds"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AlertDeduplicator(None, **kwargs)  # type: ignore[arg-type]
