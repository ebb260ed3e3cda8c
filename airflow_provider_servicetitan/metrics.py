"""The provider's metrics, emitted through Airflow's own ``Stats``.

Whatever the deployment configured in ``[metrics]`` (StatsD, DogStatsD, OpenTelemetry, or nothing)
receives them, under the backend's prefix (``airflow.`` by default). Every name starts with
``servicetitan.``; the names, types and tags are listed in ``docs/metrics.md`` and are a contract.

Tags identify a credential by its Airflow connection id, never by anything read from the
connection, so no secret can reach a metric. Emitting never raises: a broken metrics backend is
logged and the sync goes on.

:class:`MetricsListener` plugs the counters into the resilience layer of one credential::

    metrics = MetricsListener("servicetitan_acme")
    RetryPolicy.default(listener=metrics.on_retry)
    breaker.add_listener(metrics.on_transition)
    TokenManager(credentials, redis_client, on_renew=metrics.on_renew)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from airflow.sdk.observability.stats import Stats

from airflow_provider_servicetitan.errors import root_cause
from airflow_provider_servicetitan.resilience.breaker import BreakerState, BreakerTransition
from airflow_provider_servicetitan.resilience.retry import RetryEvent
from airflow_provider_servicetitan.sync.engine import ResourceSummary
from airflow_provider_servicetitan.sync.recovery import RecoveryResult

__all__ = [
    "ALL_RESOURCES",
    "BREAKER_STATE",
    "BREAKER_STATE_VALUES",
    "BREAKER_TRANSITIONS",
    "ERRORS",
    "RECORDS_FAILED",
    "RECORDS_RECOVERED",
    "RECORDS_SYNCED",
    "RETRIES",
    "SYNC_DURATION",
    "TOKEN_RENEWALS",
    "MetricsListener",
    "count_error",
    "count_records",
    "count_retry",
    "count_token_renewal",
    "emit_recovery",
    "emit_resource_summary",
    "record_breaker_transition",
    "record_sync_duration",
    "set_breaker_state",
]

log = logging.getLogger(__name__)

ERRORS = "servicetitan.errors"
RETRIES = "servicetitan.retries"
BREAKER_TRANSITIONS = "servicetitan.breaker.transitions"
BREAKER_STATE = "servicetitan.breaker.state"
TOKEN_RENEWALS = "servicetitan.token.renewals"  # noqa: S105 - a metric name, not a secret
RECORDS_SYNCED = "servicetitan.records.synced"
RECORDS_FAILED = "servicetitan.records.failed"
RECORDS_RECOVERED = "servicetitan.records.recovered"
SYNC_DURATION = "servicetitan.sync.duration"

#: Value of the ``servicetitan.breaker.state`` gauge for each breaker state.
BREAKER_STATE_VALUES: dict[BreakerState, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}

#: ``resource`` tag of the recovery counts: a recovery pass reports one total per credential.
ALL_RESOURCES = "all"


def _emit(stat: str, send: Callable[[], None]) -> None:
    """Send one metric; a failing backend is logged, never raised (metrics must not break a sync)."""
    try:
        send()
    except Exception:
        log.warning("could not emit metric %s", stat, exc_info=True)


def _incr(stat: str, count: int, tags: dict[str, str]) -> None:
    _emit(stat, lambda: Stats.incr(stat, count, tags=tags))


def count_error(credential: str, error: BaseException) -> None:
    """``servicetitan.errors`` +1, tagged with the error's class.

    A :class:`RetryExhaustedError` counts under the class of the error it gave up on.
    """
    _incr(ERRORS, 1, {"credential": credential, "error_class": type(root_cause(error)).__name__})


def count_retry(credential: str, error_class: str) -> None:
    """``servicetitan.retries`` +1: an API call failed with ``error_class`` and is tried again."""
    _incr(RETRIES, 1, {"credential": credential, "error_class": error_class})


def set_breaker_state(credential: str, breaker: str, state: BreakerState) -> None:
    """``servicetitan.breaker.state``: 0 closed, 1 half open, 2 open."""
    value = BREAKER_STATE_VALUES[state]
    tags = {"credential": credential, "breaker": breaker}
    _emit(BREAKER_STATE, lambda: Stats.gauge(BREAKER_STATE, value, tags=tags))


def record_breaker_transition(credential: str, transition: BreakerTransition) -> None:
    """``servicetitan.breaker.transitions`` +1, and the state gauge set to the new state."""
    tags = {
        "credential": credential,
        "breaker": transition.name,
        "from_state": transition.from_state.value,
        "to_state": transition.to_state.value,
    }
    _incr(BREAKER_TRANSITIONS, 1, tags)
    set_breaker_state(credential, transition.name, transition.to_state)


def count_token_renewal(credential: str) -> None:
    """``servicetitan.token.renewals`` +1: a new access token was obtained from ServiceTitan."""
    _incr(TOKEN_RENEWALS, 1, {"credential": credential})


def count_records(
    credential: str,
    resource: str,
    *,
    synced: int | None = None,
    failed: int | None = None,
    recovered: int | None = None,
) -> None:
    """Add to ``servicetitan.records.synced|failed|recovered``; a count left ``None`` is not sent."""
    tags = {"credential": credential, "resource": resource}
    for stat, count in ((RECORDS_SYNCED, synced), (RECORDS_FAILED, failed), (RECORDS_RECOVERED, recovered)):
        if count is not None:
            _incr(stat, count, tags)


def record_sync_duration(credential: str, resource: str, seconds: float) -> None:
    """``servicetitan.sync.duration``: how long one resource's sync took (backends send milliseconds)."""
    duration = timedelta(seconds=seconds)
    tags = {"credential": credential, "resource": resource}
    _emit(SYNC_DURATION, lambda: Stats.timing(SYNC_DURATION, duration, tags=tags))


def emit_resource_summary(credential: str, summary: ResourceSummary, duration_seconds: float) -> None:
    """Records synced and failed by one resource's sync, and how long it took."""
    count_records(credential, summary.resource, synced=summary.successful, failed=summary.failed)
    record_sync_duration(credential, summary.resource, duration_seconds)


def emit_recovery(result: RecoveryResult) -> None:
    """Records recovered by a recovery pass, under ``resource="all"`` (the result has one total)."""
    count_records(result.credential, ALL_RESOURCES, recovered=result.recovered)


class MetricsListener:
    """The metrics of one credential, as callbacks for the resilience layer and the client.

    :param credential: the Airflow connection id of the credential (never a secret).
    """

    def __init__(self, credential: str) -> None:
        self.credential = credential

    def on_retry(self, event: RetryEvent) -> None:
        """For ``RetryPolicy(listener=...)``."""
        count_retry(self.credential, event.error_class)

    def on_transition(self, transition: BreakerTransition) -> None:
        """For ``CircuitBreaker.add_listener``."""
        record_breaker_transition(self.credential, transition)

    def on_renew(self) -> None:
        """For ``TokenManager(on_renew=...)``."""
        count_token_renewal(self.credential)

    def on_error(self, error: BaseException) -> None:
        """For a failure that ends an operation (the error a task or a resource's sync gives up on)."""
        count_error(self.credential, error)

    def __repr__(self) -> str:
        return f"MetricsListener(credential={self.credential!r})"
