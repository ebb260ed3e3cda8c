"""Health collection against real Redis and real SQLite/PostgreSQL stores: what each row says, how
many Redis round trips it costs, and what it says when Redis is down or the warehouse is empty."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from redis.client import Pipeline

from airflow_provider_servicetitan.client.auth.cache import SharedTokenCache, token_cache_key
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.plugins import health
from airflow_provider_servicetitan.plugins.health import (
    MAX_TEXT,
    BreakerView,
    CredentialTarget,
    TokenView,
    collect,
    read_shared_states,
    read_store,
    to_json,
)
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker
from airflow_provider_servicetitan.resilience.shared_state import fail_fast_client
from airflow_provider_servicetitan.storage import DeadLetterIn, RunOwner, SyncStore
from tests.redis_outage import SwitchableProxy, fast_failing_client, redis_db

TOKEN = "tok-never-shown-0123456789"


def credentials(tenant: int = 1001, client_id: str = "client-a") -> ServiceTitanCredentials:
    return ServiceTitanCredentials.from_fields(
        client_id=client_id,
        client_secret="secret-never-shown",
        app_key="ak-never-shown",
        tenant_id=tenant,
        environment="integration",
        conn_id=f"st_{client_id}",
    )


class CountingRedis(redis.Redis):
    """redis-py's client, counting round trips: direct commands and executed pipelines."""

    round_trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).round_trips += 1
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        counter = type(self)

        class CountedPipeline(Pipeline):
            def execute(self, raise_on_error: bool = True) -> list[Any]:
                counter.round_trips += 1
                return super().execute(raise_on_error)

        return CountedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


@pytest.fixture
def counting() -> type[CountingRedis]:
    """A client class with a counter of its own."""

    class Counter(CountingRedis):
        round_trips = 0

    return Counter


def target(
    client: redis.Redis | None, namespace: str, *, client_id: str = "client-a", config: BreakerConfig | None = None
) -> CredentialTarget:
    creds = credentials(client_id=client_id)
    breaker = CircuitBreaker(f"tenant-{creds.tenant_id}-{creds.cache_id[:8]}", client, config, namespace=namespace)
    return CredentialTarget(creds.conn_id or client_id, breaker, token_cache_key(namespace, creds))


def read_shared_state(client: redis.Redis, one: CredentialTarget) -> tuple[BreakerView, TokenView]:
    [views] = read_shared_states(client, [one])
    return views


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(RuntimeError):
            breaker.call(_boom)


def _boom() -> None:
    raise RuntimeError("service down")


# -- Redis -------------------------------------------------------------------------------------


def test_a_fresh_credential_is_closed_with_no_token(redis_client: redis.Redis, key_prefix: str) -> None:
    breaker_view, token = read_shared_state(redis_client, target(redis_client, key_prefix))

    assert breaker_view.state == "closed"
    assert breaker_view.failures_in_window == 0
    assert breaker_view.admits_in_seconds == 0
    assert token.cached is False
    assert token.expires_in_seconds is None
    assert token.rejected is False


def test_an_open_breaker_shows_when_it_admits_a_probe(redis_client: redis.Redis, key_prefix: str) -> None:
    config = BreakerConfig(failure_threshold=3, open_seconds=120, window_seconds=60)
    one = target(redis_client, key_prefix, config=config)
    assert one.breaker is not None
    fail(one.breaker, 3)

    view, _token = read_shared_state(redis_client, one)

    assert view.state == "open"
    assert view.failures_in_window is not None  # what the window holds now (a transition may clear it)
    assert view.window_seconds == 60
    assert view.admits_in_seconds is not None
    assert 0 < view.admits_in_seconds <= 120


def test_failures_below_the_threshold_leave_it_closed_and_counted(redis_client: redis.Redis, key_prefix: str) -> None:
    one = target(redis_client, key_prefix, config=BreakerConfig(failure_threshold=5))
    assert one.breaker is not None
    fail(one.breaker, 2)

    view, _ = read_shared_state(redis_client, one)

    assert (view.state, view.failures_in_window) == ("closed", 2)


def test_held_open_then_reset_through_the_facade(redis_client: redis.Redis, key_prefix: str) -> None:
    one = target(redis_client, key_prefix)
    assert one.breaker is not None

    one.breaker.force_open(600)
    held, _ = read_shared_state(redis_client, one)
    one.breaker.reset()
    reset, _ = read_shared_state(redis_client, one)

    assert held.state == "open"
    assert held.admits_in_seconds is not None
    assert 500 < held.admits_in_seconds <= 600
    assert reset.state == "closed"
    assert reset.failures_in_window == 0


def test_an_open_breaker_past_its_open_period_shows_half_open(redis_client: redis.Redis, key_prefix: str) -> None:
    one = target(redis_client, key_prefix)
    assert one.breaker is not None
    one.breaker.force_open(0.05)
    deadline = time.monotonic() + 5
    view, _ = read_shared_state(redis_client, one)
    while view.state == "open" and time.monotonic() < deadline:  # polls the Redis clock, no fixed sleep
        view, _ = read_shared_state(redis_client, one)

    assert view.state == "half_open"
    assert view.admits_in_seconds == 0


def test_a_cached_token_shows_its_expiry_never_itself(redis_client: redis.Redis, key_prefix: str) -> None:
    creds = credentials()
    SharedTokenCache(creds, redis_client, namespace=key_prefix, clock=time.monotonic).store(TOKEN, 300)
    one = target(redis_client, key_prefix)

    rows = collect([one], redis_client=redis_client, store=None)

    token = rows[0].token
    assert token.cached is True
    assert token.expires_in_seconds is not None
    assert 0 < token.expires_in_seconds <= 300
    dumped = json.dumps(to_json(rows))
    for secret in (TOKEN, creds.client_secret, creds.app_key):
        assert secret not in dumped


def test_a_rejected_secret_is_shown(redis_client: redis.Redis, key_prefix: str) -> None:
    SharedTokenCache(credentials(), redis_client, namespace=key_prefix, clock=time.monotonic).mark_rejected()

    _, token = read_shared_state(redis_client, target(redis_client, key_prefix))

    assert token.rejected is True
    assert token.cached is False


def test_one_round_trip_per_batch_of_credentials(
    counting: type[CountingRedis], redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = counting.from_url(redis_url)
    targets = [target(client, key_prefix, client_id=f"client-{index}") for index in range(5)]
    counting.round_trips = 0

    rows = collect(targets, redis_client=client, store=None)
    monkeypatch.setattr(health, "REDIS_BATCH", 2)
    in_batches_of_two = counting.round_trips
    collect(targets, redis_client=client, store=None)

    assert [row.redis for row in rows] == ["ok"] * 5
    assert in_batches_of_two == 1
    assert counting.round_trips - in_batches_of_two == 3
    client.close()


def test_credentials_read_together_read_as_each_alone(redis_client: redis.Redis, key_prefix: str) -> None:
    """Targets of every shape in one round trip: each gets its own replies, none shifted."""

    def cache(client_id: str) -> SharedTokenCache:
        return SharedTokenCache(
            credentials(client_id=client_id), redis_client, namespace=key_prefix, clock=time.monotonic
        )

    cache("client-b").store(TOKEN, 300)
    cache("client-c").mark_rejected()
    counted = target(redis_client, key_prefix, client_id="client-a", config=BreakerConfig(failure_threshold=5))
    held = target(redis_client, key_prefix, client_id="client-g")
    assert counted.breaker is not None
    assert held.breaker is not None
    fail(counted.breaker, 2)
    held.breaker.force_open(600)
    with_token = target(redis_client, key_prefix, client_id="client-b")
    rejected = target(redis_client, key_prefix, client_id="client-c")
    no_token_key = CredentialTarget("st_client-d", target(redis_client, key_prefix, client_id="client-d").breaker, None)
    no_breaker = CredentialTarget("st_client-e", None, with_token.token_key)
    breaker_without_redis = target(None, key_prefix, client_id="client-f")
    targets = [counted, held, with_token, rejected, no_token_key, no_breaker, breaker_without_redis]

    together = read_shared_states(redis_client, targets)
    alone = [read_shared_state(redis_client, one) for one in targets]

    def settled(views: tuple[BreakerView, TokenView]) -> tuple[object, ...]:
        breaker, token = views  # times left move between the reads: compare what they say
        return (breaker.name, breaker.state, breaker.failures_in_window, token.cached, token.rejected)

    assert [settled(views) for views in together] == [settled(views) for views in alone]
    assert [settled(views)[1:] for views in together] == [
        ("closed", 2, False, False),
        ("open", 0, False, False),
        ("closed", 0, True, False),
        ("closed", 0, False, True),
        ("closed", 0, None, None),
        ("unknown", None, True, False),
        ("unknown", None, False, False),
    ]


def test_a_redis_error_in_a_later_batch_leaves_the_earlier_rows_ok(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FailingSecondRoundTrip(CountingRedis):
        round_trips = 0

        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
            if type(self).round_trips >= 1:
                raise redis.ConnectionError("Redis went away")
            return super().pipeline(transaction, shard_hint)

    client = FailingSecondRoundTrip.from_url(redis_url)
    targets = [target(client, key_prefix, client_id=f"client-{index}") for index in range(5)]
    monkeypatch.setattr(health, "REDIS_BATCH", 2)
    FailingSecondRoundTrip.round_trips = 0

    rows = collect(targets, redis_client=client, store=None)

    assert [row.redis for row in rows] == ["ok", "ok", "down", "down", "down"]
    assert [row.breaker.state for row in rows] == ["closed", "closed", "unknown", "unknown", "unknown"]
    client.close()


def test_redis_down_is_said_and_costs_one_failed_attempt(redis_url: str, key_prefix: str) -> None:
    with SwitchableProxy.to_redis(redis_url) as proxy:
        client = fail_fast_client(fast_failing_client("127.0.0.1", proxy.port, redis_db(redis_url)))
        targets = [target(client, key_prefix, client_id=f"client-{index}") for index in range(3)]
        proxy.switch(up=False)
        before = proxy.connections

        rows = collect(targets, redis_client=client, store=None)

        assert [row.redis for row in rows] == ["down"] * 3
        assert [row.breaker.state for row in rows] == ["unknown"] * 3
        assert [row.token.cached for row in rows] == [None] * 3
        assert proxy.connections - before == 1  # the first credential found it down; the others did not wait
        client.close()


def test_without_redis_the_rows_say_not_configured(key_prefix: str) -> None:
    rows = collect([target(None, key_prefix)], redis_client=None, store=None)

    assert rows[0].redis == "not_configured"
    assert rows[0].breaker.state == "unknown"
    assert rows[0].warehouse == "down"  # no store given


# -- warehouse ---------------------------------------------------------------------------------


def test_an_empty_warehouse_gives_empty_rows(store: SyncStore, key_prefix: str) -> None:
    rows = collect([target(None, key_prefix)], redis_client=None, store=store)

    row = rows[0]
    assert row.warehouse == "ok"
    assert row.status.status is None
    assert row.syncs == ()
    assert row.dead_letters.open == 0
    assert row.dead_letters.oldest is None
    assert row.dead_letters.letters == ()


def test_a_warehouse_without_tables_is_said_down(tmp_path: Any, key_prefix: str) -> None:
    with SyncStore(f"sqlite:///{tmp_path / 'none.db'}") as bare:
        rows = collect([target(None, key_prefix)], redis_client=None, store=bare)

    assert rows[0].warehouse == "down"


def _page(store: SyncStore, credential: str, resource: str, run_id: str, bad: list[DeadLetterIn] | None = None) -> None:
    store.start_run(run_id, credential, resource)
    store.commit_page(
        credential=credential,
        tenant_id=1001,
        resource=resource,
        run_id=run_id,
        records=[],
        dead_letters=bad or [],
        continue_from=None,
    )


def test_status_last_sync_per_resource_and_dead_letters(store: SyncStore) -> None:
    store.set_credential_status("a", "needs_attention", reason="x" * (MAX_TEXT + 50))
    _page(store, "a", "customers", "run1")
    store.finish_run("run1", "a", "customers", "success")
    _page(store, "a", "customers", "run2")
    store.finish_run("run2", "a", "customers", "failed", "HTTP 503")
    store.start_run("run2", "a", "jobs", RunOwner(host="h", scope="s", pid=1))
    (seen,) = store.running_runs("a", "jobs")
    store.mark_interrupted(seen, by_run_id="run3", message="process gone")
    letters = [
        DeadLetterIn(record_id=str(n), raw="{}", error_class="RecordValidationError", message=f"bad {n}")
        for n in range(7)
    ]
    _page(store, "a", "invoices", "run2", letters)
    _page(store, "b", "customers", "run9")  # another credential: not in a's row

    views = read_store(store, ["a", "c"], letters_shown=5)

    a = views["a"]
    assert a.status.status == "needs_attention"
    assert a.status.reason is not None
    assert len(a.status.reason) == MAX_TEXT
    by_resource = {sync.resource: sync for sync in a.syncs}
    assert by_resource["customers"].run_id == "run2"
    assert by_resource["customers"].status == "failed"
    assert by_resource["customers"].message == "HTTP 503"
    assert by_resource["jobs"].status == "interrupted"
    assert by_resource["invoices"].pages == 1
    assert by_resource["invoices"].records_failed == 7
    assert a.dead_letters.open == 7
    assert [letter.record_id for letter in a.dead_letters.letters] == ["0", "1", "2", "3", "4"]
    assert a.dead_letters.oldest == a.dead_letters.letters[0].first_seen
    assert a.dead_letters.sample_error == "RecordValidationError: bad 0"
    assert views["c"].syncs == ()
    assert views["c"].dead_letters.open == 0
    assert views["c"].status.status is None


def test_a_recovery_only_row_is_not_the_last_sync(store: SyncStore) -> None:
    bad = [DeadLetterIn(record_id="5", raw="{}", error_class="E", message="m")]
    _page(store, "a", "customers", "run1", bad)
    store.finish_run("run1", "a", "customers", "partial")
    (letter,) = store.unresolved_dead_letters("a")
    store.resolve_dead_letter(letter.id, None, run_id="run2")  # a "recovered" row of run2

    (sync,) = read_store(store, ["a"])["a"].syncs

    assert (sync.run_id, sync.status) == ("run1", "partial")


def test_rows_keep_the_order_given(store: SyncStore, key_prefix: str) -> None:
    targets = [CredentialTarget(name, None, None, ("variable",), "missing") for name in ("z", "a", "m")]

    rows = collect(targets, redis_client=None, store=store)

    assert [row.conn_id for row in rows] == ["z", "a", "m"]
    assert rows[0].problem == "missing"
    assert rows[0].sources == ("variable",)


def test_a_redis_that_cannot_even_be_built_is_said_down(key_prefix: str) -> None:
    rows = collect([target(None, key_prefix)], redis_client=None, store=None, redis_down=True)

    assert rows[0].redis == "down"
    assert rows[0].breaker.state == "unknown"
