"""seconds_until_admission: when a breaker will admit a call, from its stored fields and Redis time.

The rule is checked here case by case, at the boundaries; test_breaker_model checks it against the
reference model after every step of random histories on the real Redis breaker.
"""

from __future__ import annotations

import pytest
import redis

from airflow_provider_servicetitan.resilience.breaker import STATE_FIELDS, seconds_until_admission

from .test_breaker import Clock, Service, attempt, make_breaker

NOW = 1_700_000_000.0


def wait(fields: dict[str, str | None], leases: tuple[float, ...] = (), *, max_probes: int = 1) -> float:
    return seconds_until_admission(fields, leases, now=NOW, half_open_max_calls=max_probes)


@pytest.mark.parametrize("fields", [{}, {"state": None}, {"state": "closed", "open_until": f"{NOW + 60:.6f}"}])
def test_a_closed_breaker_or_one_without_state_admits_now(fields: dict[str, str | None]) -> None:
    assert wait(fields, (NOW + 10,)) == 0.0


@pytest.mark.parametrize(("open_until", "expected"), [(NOW + 30, 30.0), (NOW + 0.5, 0.5), (NOW, 0.0), (NOW - 5, 0.0)])
def test_an_open_breaker_admits_a_probe_at_open_until(open_until: float, expected: float) -> None:
    # Leases left from an earlier half-open period do not matter: half-opening drops them.
    assert wait({"state": "open", "open_until": f"{open_until:.6f}"}, (NOW + 100,)) == expected


def test_a_half_open_breaker_admits_while_a_probe_slot_is_free() -> None:
    half_open = {"state": "half_open", "open_until": f"{NOW - 10:.6f}"}
    assert wait(half_open) == 0.0
    assert wait(half_open, (NOW + 20,), max_probes=2) == 0.0
    assert wait(half_open, (NOW + 20,)) == 20.0
    assert wait(half_open, (NOW + 20, NOW + 5), max_probes=2) == 5.0  # the first lease to expire frees a slot


def test_expired_leases_free_their_slot_and_a_lease_expiring_now_is_expired() -> None:
    half_open = {"state": "half_open"}
    assert wait(half_open, (NOW - 1,)) == 0.0
    assert wait(half_open, (NOW,)) == 0.0  # the script drops leases whose expiry is <= now
    assert wait(half_open, (NOW - 1, NOW + 7)) == 7.0


def test_more_leases_than_slots_wait_until_enough_have_expired() -> None:
    # Possible only if the breaker's processes disagree on half_open_max_calls (a config change).
    assert wait({"state": "half_open"}, (NOW + 3, NOW + 9, NOW + 6), max_probes=2) == 6.0


def test_an_unknown_state_or_bad_max_probes_is_refused() -> None:
    with pytest.raises(ValueError, match="melted"):
        wait({"state": "melted"})
    with pytest.raises(ValueError, match="half_open_max_calls"):
        wait({"state": "half_open"}, max_probes=0)


def test_the_fields_read_from_a_real_breaker_give_its_retry_after(redis_client: redis.Redis, key_prefix: str) -> None:
    clock = Clock()
    breaker = make_breaker(
        redis_client, key_prefix, clock, failure_threshold=1, open_seconds=30, probe_lease_seconds=20
    )
    state_key, _calls, _failures, probes_key = breaker.redis_keys

    def read() -> float:
        values = redis_client.hmget(state_key, list(STATE_FIELDS))
        fields = {name: value.decode() for name, value in zip(STATE_FIELDS, values, strict=True) if value is not None}
        leases = [score for _member, score in redis_client.zrange(probes_key, 0, -1, withscores=True)]
        return seconds_until_admission(fields, leases, now=clock.now, half_open_max_calls=1)

    assert read() == 0.0  # no keys yet
    attempt(breaker, Service().fail)
    clock.advance(10)
    assert read() == 20.0
    clock.advance(20)
    assert read() == 0.0  # due: the next call half-opens it and probes
    breaker.acquire()
    clock.advance(5)
    assert read() == 15.0  # the lease taken 5 s ago
