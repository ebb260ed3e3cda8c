"""Which events call a person, and what to tell them.

Only incidents a person can act on become alerts: a rejected or misconfigured credential, retries
that gave up, a circuit breaker that opened, too many parked records. A breaker refusing a call is
not a new incident (the opening already alerted once), and an exception this provider does not
know is left to Airflow's own failure handling.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from airflow_provider_servicetitan.errors import (
    CircuitBreakerOpenError,
    CredentialValidationError,
    InvalidCredentialsError,
    MalformedResponseError,
    PermissionDeniedError,
    RateLimitExceededError,
    RetryExhaustedError,
    ServiceTitanConnectionError,
    ServiceTitanError,
    ServiceTitanServerError,
    ServiceTitanTimeoutError,
    TokenRefreshError,
    root_cause,
)
from airflow_provider_servicetitan.notifications.alerts import Alert, AlertKind, make_incident_key
from airflow_provider_servicetitan.resilience.breaker import BreakerTransition

__all__ = [
    "TaskTries",
    "alert_from_exception",
    "alert_from_transition",
    "dead_letter_alert",
    "find_servicetitan_error",
    "resolved_alert",
]

_OPEN_REASONS = {
    "failure_threshold": "too many failed calls in its window",
    "failure_rate": "the share of failed calls crossed its threshold",
    "probe_failed": "the test call after the pause failed too",
    "forced_open": "an operator forced it open",
}


@dataclass(frozen=True)
class TaskTries:
    """The Airflow task tries behind a failure, as plain facts (the notifier reads them from the
    failure callback's context), so an alert can say how long a person was not told.

    :param try_number: the try that failed (Airflow's ``ti.try_number``: 1 for the first, counting
        the tries before a Clear too).
    :param max_tries: Airflow's ``ti.max_tries``: the task may run up to ``max_tries + 1`` times.
    :param run_started_at: when the DAG run started (``dag_run.start_date``; a Clear restarts it).
    :param failed_at: when the task failed (aware datetimes, as Airflow's).
    """

    try_number: int
    max_tries: int | None = None
    run_started_at: datetime | None = None
    failed_at: datetime | None = None

    def describe(self) -> str:
        """E.g. ``4 Airflow task tries (try 4 of 4; the DAG run started 16 min ago)``."""
        facts = [f"try {self.try_number} of {self.max_tries + 1}"] if self.max_tries is not None else []
        if self.run_started_at is not None and self.failed_at is not None:
            age = (self.failed_at - self.run_started_at).total_seconds()
            facts.append(f"the DAG run started {_duration(age)} ago")
        tries = "1 Airflow task try" if self.try_number == 1 else f"{self.try_number} Airflow task tries"
        return f"{tries} ({'; '.join(facts)})" if facts else tries


def _duration(seconds: float) -> str:
    """``45 s``, ``16 min``, ``2 h 5 min``, ``3 d 4 h``: how long, to a person."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total} s"
    minutes = total // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def find_servicetitan_error(exception: BaseException) -> ServiceTitanError | None:
    """The first provider error in ``exception``'s chain.

    Operators turn some provider errors into Airflow exceptions (``AirflowFailException`` raised
    while handling an ``InvalidCredentialsError``); the cause is still in the chain.
    """
    seen: set[int] = set()
    current: BaseException | None = exception
    while current is not None and id(current) not in seen:
        if isinstance(current, ServiceTitanError):
            return current
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


def alert_from_exception(
    exception: BaseException,
    *,
    credential: str,
    tenant_id: str | None = None,
    log_url: str | None = None,
    task_tries: TaskTries | None = None,
) -> Alert | None:
    """The alert for a task that failed with ``exception``, or ``None`` if it needs no person.

    ``task_tries``: the Airflow tries behind the failure, told by a retries-exhausted alert.
    """
    error = find_servicetitan_error(exception)
    if isinstance(error, InvalidCredentialsError):
        return Alert(
            kind=AlertKind.NEEDS_ATTENTION,
            credential=credential,
            tenant_id=tenant_id,
            error_class=type(error).__name__,
            trace_id=error.trace_id,
            log_url=log_url,
            summary=f"ServiceTitan rejected the credential of connection {credential}: {error}",
            system_action=(
                "Stopped using this credential without retrying, so the account is not locked out; "
                "its runs are skipped (and recorded) until the connection's secret changes."
            ),
            human_action=(
                f"Fix the client id, client secret or app key of the Airflow connection {credential} "
                "(ServiceTitan: Settings > Integrations > API Application Access); the next run picks it up."
            ),
        )
    if isinstance(error, CredentialValidationError):
        return Alert(
            kind=AlertKind.NEEDS_ATTENTION,
            credential=credential,
            tenant_id=tenant_id,
            error_class=type(error).__name__,
            log_url=log_url,
            incident_key=make_incident_key(
                credential, AlertKind.NEEDS_ATTENTION, f"{type(error).__name__}:{error.field}"
            ),
            summary=f"The Airflow connection {credential} is misconfigured: {error}",
            system_action="Did not call ServiceTitan with this connection; its runs fail at once until it is fixed.",
            human_action=f"Set the field {error.field!r} of the Airflow connection {credential} to {error.expected}.",
            details={"field": error.field},
        )
    if isinstance(error, PermissionDeniedError):
        return Alert(
            kind=AlertKind.NEEDS_ATTENTION,
            credential=credential,
            tenant_id=tenant_id,
            error_class=type(error).__name__,
            trace_id=error.trace_id,
            log_url=log_url,
            incident_key=make_incident_key(
                credential, AlertKind.NEEDS_ATTENTION, f"{type(error).__name__}:{error.path}"
            ),
            summary=f"ServiceTitan refused access: {error}",
            system_action="Failed the task without retrying: asking again gets the same answer.",
            human_action=(
                "Check that the tenant has licensed this module and that the ServiceTitan app has the scope "
                "for this endpoint, or remove the resource from this credential's sync."
            ),
        )
    if isinstance(error, RetryExhaustedError):
        return _retries_exhausted(
            error, credential=credential, tenant_id=tenant_id, log_url=log_url, task_tries=task_tries
        )
    return None


def _retries_exhausted(
    error: RetryExhaustedError,
    *,
    credential: str,
    tenant_id: str | None,
    log_url: str | None,
    task_tries: TaskTries | None,
) -> Alert:
    """Says first how many Airflow task tries failed and over how long, then what the last try's
    calls did: a retry count alone (of the last call) hides how long the credential was down."""
    last = root_cause(error)
    trace_id = getattr(last, "trace_id", None)
    if task_tries is not None:
        gave_up = f"Gave up on ServiceTitan after {task_tries.describe()}. The last try's calls"
        each = (
            "in its only task try"
            if task_tries.try_number == 1
            else f"in each of the {task_tries.try_number} task tries"
        )
    else:
        gave_up = "Gave up on ServiceTitan: the calls"
        each = "in this task"
    calls = f"gave up after {error.attempts} attempts"
    if isinstance(last, CircuitBreakerOpenError):
        summary = (
            f"{gave_up} {calls}: the circuit breaker {last.breaker_name!r} is open (ServiceTitan kept failing), "
            f"so no call was made; it admits a test call in {last.retry_after:.0f}s."
        )
    else:
        summary = f"{gave_up} {calls}; the last error was {type(last).__name__}: {last}"
    system_action = f"Retried the calls with exponential backoff and jitter {each}"
    if isinstance(last, RateLimitExceededError):
        system_action += ", waiting as long as ServiceTitan's Retry-After asked (or in the triggerer, when longer)"
    system_action += (
        "; kept the last committed checkpoint, so the next attempt resumes from there without duplicating data."
    )
    return Alert(
        kind=AlertKind.RETRIES_EXHAUSTED,
        credential=credential,
        tenant_id=tenant_id,
        error_class=type(last).__name__,
        trace_id=str(trace_id) if trace_id else None,
        breaker_state="open" if isinstance(last, CircuitBreakerOpenError) else None,
        log_url=log_url,
        summary=summary,
        system_action=system_action,
        human_action=_retry_advice(last),
        details={"call_attempts": error.attempts},
    )


def _retry_advice(last: BaseException) -> str:
    """What a person can do about the error retries could not get past."""
    resumes = "The next scheduled run resumes by itself."
    if isinstance(last, CircuitBreakerOpenError):
        return (
            f"Usually nothing: the breaker tests ServiceTitan again by itself. {resumes} If it keeps "
            "opening, check ServiceTitan's status and the failing calls in the task log."
        )
    if isinstance(last, RateLimitExceededError):
        return (
            "Check whether another integration uses this app's quota; lower this DAG's concurrency "
            f"(pool, max_active_tis_per_dag) or ask ServiceTitan for a higher limit. {resumes}"
        )
    if isinstance(last, TokenRefreshError):
        return f"ServiceTitan's token endpoint was failing: check ServiceTitan's status. {resumes}"
    if isinstance(last, ServiceTitanServerError | MalformedResponseError):
        return (
            "Check ServiceTitan's status; if it lasts, contact ServiceTitan support quoting the traceId. "
            f"Nothing to fix on this side. {resumes}"
        )
    if isinstance(last, ServiceTitanTimeoutError | ServiceTitanConnectionError):
        return f"Check the network from the Airflow workers to ServiceTitan (DNS, proxy, firewall). {resumes}"
    return f"Read the task log for the failing call. {resumes}"


def alert_from_transition(
    transition: BreakerTransition, *, credential: str, tenant_id: str | None = None
) -> Alert | None:
    """A ``circuit_opened`` alert when the breaker opened; ``None`` for any other transition."""
    if transition.to_state != "open":
        return None
    reason = _OPEN_REASONS.get(transition.reason, transition.reason)
    pause = ""
    if transition.open_until is not None:
        until = datetime.fromtimestamp(transition.open_until, UTC)
        pause = f" until {until:%H:%M:%S} UTC ({max(0.0, transition.open_until - transition.at):.0f}s)"
    return Alert(
        kind=AlertKind.CIRCUIT_OPENED,
        credential=credential,
        tenant_id=tenant_id,
        breaker_state="open",
        incident_key=make_incident_key(credential, AlertKind.CIRCUIT_OPENED, transition.name),
        summary=f"The circuit breaker {transition.name!r} opened: {reason}.",
        system_action=(
            f"Stopped calling ServiceTitan for this credential{pause} on every worker, to let it recover; "
            "then one test call closes the breaker if it succeeds. Syncs resume from their checkpoints."
        ),
        human_action=(
            "Usually nothing: it recovers by itself. If it keeps opening, check ServiceTitan's status "
            "and the failing calls in the task logs."
        ),
        details={"breaker": transition.name, "reason": transition.reason},
    )


def dead_letter_alert(
    credential: str, count: int, threshold: int, *, tenant_id: str | None = None, log_url: str | None = None
) -> Alert:
    """The alert for ``count`` parked records of a credential, to raise when it is over ``threshold``."""
    return Alert(
        kind=AlertKind.DEAD_LETTERS_OVER_THRESHOLD,
        credential=credential,
        tenant_id=tenant_id,
        log_url=log_url,
        summary=f"{count} records of {credential} could not be processed (alert threshold: {threshold}).",
        system_action=(
            "Parked them as dead letters instead of losing them and retried them in the recovery task; "
            "the rest of the data is synced."
        ),
        human_action=(
            f"Look at the dead-letter table (servicetitan_dead_letters by default) for {credential}: its "
            "error column says why each record failed. Fix the cause; the recovery task re-processes them."
        ),
        details={"dead_letters": count, "threshold": threshold},
    )


def resolved_alert(
    credential: str,
    kinds: AlertKind | str | Iterable[AlertKind | str] | None = None,
    *,
    tenant_id: str | None = None,
) -> Alert:
    """The all-clear for ``credential``: for its open incidents of ``kinds`` (one or several), or
    all of them (``None``).

    The notifier sends it only when the credential has such open incidents: one message naming
    every incident it closed.
    """
    if kinds is None:
        resolves = None
    else:
        resolves = tuple(AlertKind(kind) for kind in ([kinds] if isinstance(kinds, str) else kinds))
    scope = ",".join(sorted(resolves)) if resolves is not None else None
    return Alert(
        kind=AlertKind.RESOLVED,
        credential=credential,
        tenant_id=tenant_id,
        incident_key=make_incident_key(credential, AlertKind.RESOLVED, scope),
        summary=f"{credential} works again.",
        system_action="Closed the open incidents named above; a new failure alerts again.",
        human_action="Nothing.",
        resolves=resolves,
    )
