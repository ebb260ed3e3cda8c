"""A credential's life without Airflow: every transition of ``sync_credential`` against a real SQLite
store, and the sandbox where ServiceTitan must answer."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.errors import (
    CircuitBreakerOpenError,
    CredentialValidationError,
    InvalidCredentialsError,
    RetryExhaustedError,
    root_cause,
)
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from airflow_provider_servicetitan.notifications.alerts import AlertKind
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, BreakerState
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.storage.store import SyncStore
from airflow_provider_servicetitan.sync.credential import (
    RESOLVED_BY_A_CLEAN_SYNC,
    CredentialOutcome,
    sync_credential,
)
from airflow_provider_servicetitan.sync.engine import ResourceSummary, SyncEvents
from tests.helpers import credentials_for, set_connection

CRED = "st_acme"
RESOURCES = ["customers", "jobs", "invoices"]
# Gives up fast: a failing resource costs three quick attempts.
FAST_RETRIES = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002, max_elapsed=5)


class Factory:
    """Gives the credential and builds its client from plain values, as the hook does from a connection."""

    def __init__(
        self,
        credentials: Callable[[], ServiceTitanCredentials],
        make_client: Callable[..., ServiceTitanClient] | None = None,
        **client_args: object,
    ) -> None:
        self._credentials = credentials
        self._make_client = make_client
        self._client_args = client_args
        self.connects = 0

    def get_credentials(self) -> ServiceTitanCredentials:
        return self._credentials()

    def get_conn(self) -> ServiceTitanClient:
        self.connects += 1
        assert self._make_client is not None, "this case must not build a client"
        return self._make_client(self._credentials(), **self._client_args)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SyncStore]:
    with SyncStore(f"sqlite:///{tmp_path / 'store.db'}") as sqlite_store:
        sqlite_store.create_tables()
        yield sqlite_store


def offline_credentials(**changes: object) -> Callable[[], ServiceTitanCredentials]:
    """Credentials pointing nowhere (nothing may be called), built from connection-like fields."""
    fields: dict[str, object] = {
        "client_id": "cid.acme",
        "client_secret": "cs1.acme-secret",
        "app_key": "ak1.acme-key",
        "tenant_id": "1001",
        "auth_url": "http://127.0.0.1:9/connect/token",
        "api_url": "http://127.0.0.1:9",
        **changes,
    }
    return lambda: ServiceTitanCredentials.from_fields(**fields, conn_id=CRED)


def run(factory: Factory, store: SyncStore, run_id: str = "run-1", **kwargs: object) -> CredentialOutcome:
    return sync_credential(factory, store, credential=CRED, run_id=run_id, resources=RESOURCES, **kwargs)


def run_log(store: SyncStore, run_id: str) -> dict[str, str]:
    return {row.resource: row.status for row in store.get_run_log(run_id)}


def test_the_incidents_a_clean_sync_resolves_are_alert_kinds() -> None:
    assert {AlertKind(kind) for kind in RESOLVED_BY_A_CLEAN_SYNC} == {
        AlertKind.NEEDS_ATTENTION,
        AlertKind.RETRIES_EXHAUSTED,
        AlertKind.CIRCUIT_OPENED,
    }


def test_an_invalid_field_needs_attention_by_name_and_calls_nothing(store: SyncStore) -> None:
    factory = Factory(offline_credentials(app_key="ak1.abc\r\nX-Injected: 1"))

    outcome = run(factory, store)

    assert (outcome.kind, outcome.field) == ("needs_attention", "app_key")
    assert isinstance(outcome.error, CredentialValidationError)
    assert outcome.resolves == ()
    assert "abc" not in (outcome.reason or "")
    assert factory.connects == 0
    status = store.get_credential_status(CRED)
    assert status is not None
    assert (status.status, status.reason, status.secret_fingerprint) == ("needs_attention", outcome.reason, None)
    assert run_log(store, "run-1") == {}


def test_an_invalid_client_setting_needs_attention_by_name(store: SyncStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook is a factory too; its settings are checked when it builds the client."""
    set_connection(
        monkeypatch,
        CRED,
        conn_type="servicetitan",
        login="cid.acme",
        password="cs1.acme-secret",
        extra={"app_key": "ak1.acme-key", "tenant_id": "1001", "breaker": {"failure_threshold": -1}},
    )
    hook = ServiceTitanHook(CRED, None)

    outcome = run(hook, store)

    assert (outcome.kind, outcome.field) == ("needs_attention", "extra.breaker")
    status = store.get_credential_status(CRED)
    assert status is not None
    assert (status.status, status.secret_fingerprint) == ("needs_attention", hook.get_credentials().secret_fingerprint)


def test_a_known_bad_secret_is_skipped_with_a_log_row_per_resource(store: SyncStore) -> None:
    credentials = offline_credentials()
    store.set_credential_status(CRED, "needs_attention", "rejected", credentials().secret_fingerprint)
    factory = Factory(credentials)

    outcome = run(factory, store, "run-2")

    assert outcome.kind == "skipped_known_bad"
    assert outcome.reason is not None
    assert outcome.reason.startswith("credential needs attention since ")
    assert outcome.reason.endswith(" UTC: rejected")
    assert (outcome.error, outcome.summaries, outcome.resolves) == (None, {}, ())
    assert factory.connects == 0
    assert run_log(store, "run-2") == dict.fromkeys(RESOURCES, "skipped")
    assert {row.message for row in store.get_run_log("run-2")} == {outcome.reason}
    status = store.get_credential_status(CRED)
    assert status is not None
    assert status.status == "needs_attention"


def test_a_clean_sync_is_ok_and_resolves_the_credential_incidents(start_sandbox, make_client, store) -> None:
    sandbox = start_sandbox(records=30)
    credentials = credentials_for(sandbox)
    # A secret that changed since it was rejected is tried again.
    store.set_credential_status(CRED, "needs_attention", "rejected", "fingerprint-of-the-old-secret")
    connected: list[ServiceTitanClient] = []
    timed: list[tuple[str, str, float]] = []

    outcome = run(
        Factory(lambda: credentials, make_client),
        store,
        on_connect=connected.append,
        on_resource=lambda summary, seconds: timed.append((summary.resource, summary.status, seconds)),
        clock=itertools.count().__next__,
        max_concurrency=1,  # one after another: each resource takes exactly one tick of the clock
    )

    assert outcome.kind == "ok"
    assert (outcome.reason, outcome.error) == (None, None)
    assert outcome.resolves == RESOLVED_BY_A_CLEAN_SYNC
    assert outcome.tenant_id == credentials.tenant_id
    assert list(outcome.summaries) == RESOURCES
    assert outcome.degraded_resources == []
    assert {summary.status for summary in outcome.summaries.values()} == {"success"}
    (jobs,) = [row for row in store.get_run_log("run-1") if row.resource == "jobs"]
    assert outcome.summary_dict()["jobs"] == {"status": "success", "message": None, **jobs.counters()}
    assert jobs.records_successful == outcome.summaries["jobs"].successful > 0
    assert timed == [(resource, "success", 1) for resource in RESOURCES]
    assert [client.tenant_id for client in connected] == [credentials.tenant_id]
    status = store.get_credential_status(CRED)
    assert status is not None
    assert (status.status, status.reason, status.secret_fingerprint) == ("ok", None, credentials.secret_fingerprint)
    assert run_log(store, "run-1") == dict.fromkeys(RESOURCES, "success")


def test_an_unlicensed_module_leaves_the_credential_degraded_without_an_error(
    start_sandbox, make_client, store
) -> None:
    sandbox = start_sandbox(records=30, unlicensed_modules={1001: ["accounting"]})
    credentials = credentials_for(sandbox)
    assert credentials.tenant_id == 1001

    outcome = run(Factory(lambda: credentials, make_client), store)

    assert outcome.kind == "degraded"
    assert outcome.degraded_resources == ["invoices"]
    assert outcome.error is None
    assert outcome.resolves == ()
    assert outcome.reason is not None
    assert outcome.reason.startswith("invoices: not licensed")
    status = store.get_credential_status(CRED)
    assert status is not None
    assert (status.status, status.reason) == ("degraded", outcome.reason)
    assert run_log(store, "run-1") == {"customers": "success", "jobs": "success", "invoices": "skipped"}


def test_failures_leave_it_degraded_and_hand_back_the_first_error(start_sandbox, make_client, store) -> None:
    sandbox = start_sandbox(records=30)
    credentials = credentials_for(sandbox)
    sandbox.admin.set_faults(error_rate=1.0)
    errors: list[Exception] = []
    summaries: list[ResourceSummary] = []
    # A breaker that stays closed: every resource is tried and fails on its own.
    stays_closed = BreakerConfig(failure_threshold=1000, minimum_calls=1000)

    outcome = run(
        Factory(lambda: credentials, make_client, retry_policy=FAST_RETRIES, breaker_config=stays_closed),
        store,
        on_error=errors.append,
        on_resource=lambda summary, _seconds: summaries.append(summary),
    )

    assert outcome.kind == "degraded"
    assert outcome.degraded_resources == RESOURCES
    assert isinstance(outcome.error, RetryExhaustedError)
    assert outcome.error is errors[0]
    assert (outcome.held_back_for, outcome.not_attempted) == (None, ())
    assert len(errors) == len(RESOURCES)
    assert [summary.status for summary in summaries] == ["failed"] * len(RESOURCES)
    assert outcome.resolves == ()
    assert run_log(store, "run-1") == dict.fromkeys(RESOURCES, "failed")
    assert all(store.get_checkpoint(CRED, resource) is None for resource in RESOURCES)
    status = store.get_credential_status(CRED)
    assert status is not None
    assert status.status == "degraded"
    assert all(f"{resource}: RetryExhaustedError" in (status.reason or "") for resource in RESOURCES)


def test_resources_sync_at_the_same_time_up_to_max_concurrency(
    start_sandbox, make_client, store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = start_sandbox(records=30)
    credentials = credentials_for(sandbox)
    # Every API request waits until the faults change: the syncs in progress pile up there.
    sandbox.admin.set_faults(hold_after_pages=0)
    syncing: set[str] = set()
    most_at_once = 0
    lock = threading.Lock()
    start_run, finish_run = store.start_run, store.finish_run

    def started(run_id: str, credential: str, resource: str, *args: object) -> None:
        nonlocal most_at_once
        with lock:
            syncing.add(resource)
            most_at_once = max(most_at_once, len(syncing))
        start_run(run_id, credential, resource, *args)

    def finished(run_id: str, credential: str, resource: str, *args: object, **kwargs: object) -> None:
        finish_run(run_id, credential, resource, *args, **kwargs)
        with lock:
            syncing.discard(resource)

    monkeypatch.setattr(store, "start_run", started)
    monkeypatch.setattr(store, "finish_run", finished)
    with ThreadPoolExecutor(1) as runner:
        running = runner.submit(run, Factory(lambda: credentials, make_client), store, max_concurrency=2)
        sandbox.admin.wait_for_held(2, timeout=60)  # two resources wait for ServiceTitan at once
        sandbox.admin.set_faults(hold_after_pages=None)
        outcome = running.result(timeout=120)

    assert outcome.kind == "ok"
    assert list(outcome.summaries) == RESOURCES
    assert most_at_once == 2
    assert run_log(store, "run-1") == dict.fromkeys(RESOURCES, "success")


def test_while_the_breaker_probes_one_resource_goes_first_and_the_others_follow(
    start_sandbox, make_client, store
) -> None:
    sandbox = start_sandbox(records=30)
    credentials = credentials_for(sandbox)

    def half_open(client: ServiceTitanClient) -> None:
        client.breaker.force_open(600)
        assert client.breaker.request_probe() is BreakerState.HALF_OPEN

    outcome = run(Factory(lambda: credentials, make_client), store, on_connect=half_open, max_concurrency=3)

    # The probe got through alone; the other resources were not refused while it was out.
    assert outcome.kind == "ok"
    assert run_log(store, "run-1") == dict.fromkeys(RESOURCES, "success")


def test_max_concurrency_must_be_a_positive_whole_number(store: SyncStore) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        run(Factory(offline_credentials()), store, max_concurrency=0)


@pytest.mark.parametrize(
    ("max_concurrency", "tried", "not_attempted"),
    [(1, ["customers"], ("jobs", "invoices")), (2, ["customers", "jobs"], ("invoices",))],
)
def test_an_open_breaker_stops_the_run_and_says_how_long_to_wait(
    start_sandbox, make_client, store, max_concurrency: int, tried: list[str], not_attempted: tuple[str, ...]
) -> None:
    sandbox = start_sandbox(records=30)
    credentials = credentials_for(sandbox)
    sandbox.admin.set_faults(error_rate=1.0)
    events = SyncEvents()
    # Opens on the second failure, for 300 s: the next attempts are refused.
    opens_at_once = BreakerConfig(failure_threshold=2, minimum_calls=2, open_seconds=300)

    outcome = run(
        Factory(lambda: credentials, make_client, retry_policy=FAST_RETRIES, breaker_config=opens_at_once),
        store,
        events=events,
        max_concurrency=max_concurrency,
    )

    assert outcome.kind == "degraded"
    assert isinstance(outcome.error, RetryExhaustedError)
    assert isinstance(root_cause(outcome.error), CircuitBreakerOpenError)
    assert outcome.held_back_for is not None
    assert 290 < outcome.held_back_for <= 300
    # The resources not started yet share the breaker: they are left for later, not refused one by one.
    assert outcome.not_attempted == not_attempted
    assert events.breaker_events == 1
    assert run_log(store, "run-1") == dict.fromkeys(tried, "failed")
    status = store.get_credential_status(CRED)
    assert status is not None
    assert status.status == "degraded"
    assert f"not attempted until ServiceTitan may be called again: {', '.join(not_attempted)}" in (status.reason or "")


def test_the_summary_counts_what_every_try_of_the_run_committed(start_sandbox, make_client, store) -> None:
    """The XCom summary reads the sync log: pages committed by a try that then failed are counted."""
    sandbox = start_sandbox(records=30, export_page_size=10)
    credentials = credentials_for(sandbox)
    stays_closed = BreakerConfig(failure_threshold=1000, minimum_calls=1000)
    factory = Factory(lambda: credentials, make_client, retry_policy=FAST_RETRIES, breaker_config=stays_closed)
    commit_page = store.commit_page

    # The sandbox holds the third page's request until the faults change: the fault then meets it,
    # however far ahead of the commits the sync fetches.
    sandbox.admin.set_faults(hold_after_pages=2)

    def fail_after_two_pages(**page: object) -> None:
        commit_page(**page)
        if store.get_run_log("run-1")[0].pages == 2:
            sandbox.admin.set_faults(error_rate=1.0, hold_after_pages=None)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "commit_page", fail_after_two_pages)
        failed = sync_credential(factory, store, credential=CRED, run_id="run-1", resources=["customers"])

    assert failed.kind == "degraded"
    assert failed.summaries["customers"].status == "failed"
    assert failed.summary_dict()["customers"]["pages"] == 2
    assert failed.summary_dict()["customers"]["records_processed"] == 20
    sandbox.admin.set_faults(error_rate=0.0)

    retried = sync_credential(factory, store, credential=CRED, run_id="run-1", resources=["customers"])

    (row,) = store.get_run_log("run-1")
    assert retried.summary_dict() == {"customers": {"status": "success", "message": None, **row.counters()}}
    assert row.records_processed == 30


def test_a_rejected_secret_needs_attention_is_skipped_after_and_tried_again_once_changed(
    start_sandbox, make_client, store
) -> None:
    sandbox = start_sandbox(records=30)
    wrong = credentials_for(sandbox, client_secret="cs1.wrong-secret")
    errors: list[Exception] = []

    rejected = run(Factory(lambda: wrong, make_client), store, "run-1", on_error=errors.append)

    assert (rejected.kind, rejected.field) == ("needs_attention", None)
    assert isinstance(rejected.error, InvalidCredentialsError)
    assert errors[0] is rejected.error
    assert all(isinstance(error, InvalidCredentialsError) for error in errors)
    assert "cs1.wrong-secret" not in (rejected.reason or "")
    # The resources syncing at once share the rejection: ServiceTitan was asked once with that secret.
    assert sandbox.admin.stats()["token_requests_total"] == 1
    assert set(run_log(store, "run-1").values()) == {"failed"}
    status = store.get_credential_status(CRED)
    assert status is not None
    assert (status.status, status.secret_fingerprint) == ("needs_attention", wrong.secret_fingerprint)
    tokens = sandbox.admin.stats()["token_requests_total"]

    again = Factory(lambda: wrong, make_client)
    skipped = run(again, store, "run-2")

    assert skipped.kind == "skipped_known_bad"
    assert again.connects == 0
    assert sandbox.admin.stats()["token_requests_total"] == tokens

    fixed = run(Factory(lambda: credentials_for(sandbox), make_client), store, "run-3")

    assert (fixed.kind, fixed.resolves) == ("ok", RESOLVED_BY_A_CLEAN_SYNC)
    assert run_log(store, "run-3") == dict.fromkeys(RESOURCES, "success")
