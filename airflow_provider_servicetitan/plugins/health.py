"""The health of each credential, read cheaply and without Airflow: what the page and the JSON API show.

Two sources, each read in a bounded way:

* **Redis** (breaker and token): one pipelined, transactional round trip per :data:`REDIS_BATCH`
  credentials (:func:`read_shared_states`). For each: Redis ``TIME``, the breaker's state fields
  (``HMGET`` of :data:`~airflow_provider_servicetitan.resilience.breaker.STATE_FIELDS`), its newest
  failures and its probe leases, the remaining TTL of the shared token and whether its secret was
  rejected. The token itself is never read: only ``PTTL`` and ``EXISTS`` of its keys. When Redis
  cannot be reached the rows say so (``redis: "down"``) and Redis is not tried again in the same read.
* **The warehouse** (:func:`read_store`): a fixed number of queries for all credentials (status,
  last sync per resource, open dead letter counts) plus one ``LIMIT``-ed query per credential (its
  oldest open dead letters). An empty warehouse gives empty rows, an unreachable one says so.

Everything here is plain data (frozen dataclasses) that :func:`to_json` turns into JSON. Texts that
come from outside (reasons, error messages) are cut to :data:`MAX_TEXT` characters and are
rendered by the page as text, never as HTML.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import redis
from sqlalchemy import and_, func, select
from sqlalchemy.exc import SQLAlchemyError

from airflow_provider_servicetitan.resilience.breaker import STATE_FIELDS, CircuitBreaker, seconds_until_admission
from airflow_provider_servicetitan.storage import RECOVERED, SyncStore

__all__ = [
    "MAX_TEXT",
    "BreakerView",
    "CredentialHealth",
    "CredentialTarget",
    "DeadLetterView",
    "DeadLettersView",
    "ResourceSync",
    "StatusView",
    "StoreView",
    "TaskLink",
    "TokenView",
    "collect",
    "read_shared_states",
    "read_store",
    "to_json",
]

log = logging.getLogger(__name__)

MAX_TEXT = 500
"""Longest reason, message or error text shown (they come from outside: cut, then escaped by the page)."""
FAILURE_SAMPLE = 1000
"""At most this many of a breaker's newest failures are read to count those in its window."""
LETTERS_SHOWN = 5
"""Open dead letters listed per credential (oldest first): the ones a person can mark as handled."""
REDIS_BATCH = 100
"""Credentials read in one Redis round trip: one transaction each, so that a page of thousands of
credentials costs a few round trips and never holds Redis for long."""

RedisState = Literal["ok", "down", "not_configured"]
BreakerStateName = Literal["closed", "half_open", "open", "unknown"]


@dataclass(frozen=True)
class CredentialTarget:
    """What to read for one credential, built by the Airflow side (:mod:`.sources`).

    :param conn_id: the ``servicetitan`` connection id.
    :param breaker: its circuit breaker, as the hook builds it (``None`` when the connection cannot
        be read; without a Redis client its state is per process and not shown).
    :param token_key: the Redis key of its shared token (see ``client.auth.cache.token_cache_key``).
    :param sources: where the credential was found: ``connection`` and/or ``variable``.
    :param problem: why the connection cannot be used (no secret in it), ``None`` if it can.
    """

    conn_id: str
    breaker: CircuitBreaker | None
    token_key: str | None
    sources: tuple[str, ...] = ("connection",)
    problem: str | None = None


@dataclass(frozen=True)
class BreakerView:
    """The credential's circuit breaker as Redis holds it.

    :param state: ``closed``, ``half_open``, ``open``, or ``unknown`` (Redis down or no breaker). An
        open breaker whose open period is over is shown ``half_open``: the next call is a probe.
    :param failures_in_window: failed calls in its rolling window.
    :param window_seconds: the length of that window.
    :param admits_in_seconds: when it admits a call (a probe when not closed); 0 = now.
    """

    state: BreakerStateName = "unknown"
    failures_in_window: int | None = None
    window_seconds: float | None = None
    admits_in_seconds: float | None = None
    name: str | None = None


@dataclass(frozen=True)
class TokenView:
    """The shared token of the credential: whether one is cached and for how long (never the token).

    :param rejected: a worker found the credential's current secret refused by the token endpoint.
    """

    cached: bool | None = None
    expires_in_seconds: float | None = None
    rejected: bool | None = None


@dataclass(frozen=True)
class StatusView:
    """The credential's health as the last sync recorded it (``None`` fields: never recorded)."""

    status: str | None = None
    reason: str | None = None
    since: datetime | None = None


@dataclass(frozen=True)
class ResourceSync:
    """The last sync of one resource (rows only counting recovered records are not syncs)."""

    resource: str
    run_id: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    pages: int
    records: int
    records_failed: int
    message: str | None


@dataclass(frozen=True)
class DeadLetterView:
    """One open dead letter, as a person needs to judge it (its raw payload is not shown)."""

    id: int
    resource: str
    record_id: str | None
    error_class: str
    message: str
    attempts: int
    first_seen: datetime


@dataclass(frozen=True)
class DeadLettersView:
    """The open dead letters of a credential: how many, the oldest, and the oldest few themselves."""

    open: int = 0
    oldest: datetime | None = None
    sample_error: str | None = None
    letters: tuple[DeadLetterView, ...] = ()


@dataclass(frozen=True)
class TaskLink:
    """The latest task instance of a credential (``sync`` or ``recover``) and where its log is."""

    task_id: str
    run_id: str
    map_index: int
    try_number: int
    state: str | None
    start_date: datetime | None
    ui_url: str
    log_api_url: str


@dataclass(frozen=True)
class StoreView:
    """What the warehouse says about one credential."""

    status: StatusView = field(default_factory=StatusView)
    syncs: tuple[ResourceSync, ...] = ()
    dead_letters: DeadLettersView = field(default_factory=DeadLettersView)


@dataclass(frozen=True)
class CredentialHealth:
    """One row of the page."""

    conn_id: str
    sources: tuple[str, ...]
    problem: str | None
    redis: RedisState
    warehouse: Literal["ok", "down"]
    status: StatusView
    breaker: BreakerView
    token: TokenView
    syncs: tuple[ResourceSync, ...]
    dead_letters: DeadLettersView
    latest_tasks: tuple[TaskLink, ...] = ()


def cut(text: str | None, limit: int = MAX_TEXT) -> str | None:
    """``text`` at most ``limit`` characters long (an ellipsis says it was cut)."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


# -- Redis ---------------------------------------------------------------------------------------


def read_shared_states(client: redis.Redis, targets: Sequence[CredentialTarget]) -> list[tuple[BreakerView, TokenView]]:
    """The breaker and token of each of ``targets``, in one transactional round trip (one snapshot,
    Redis clock). Callers send at most :data:`REDIS_BATCH` targets at once.

    :raises redis.RedisError: Redis could not be read.
    """
    with client.pipeline(transaction=True) as pipe:
        for target in targets:
            _queue_reads(pipe, target)
        replies: list[Any] = pipe.execute()
    views = []
    for target in targets:
        view, replies = _read_replies(target, replies)
        views.append(view)
    return views


def _queue_reads(pipe: redis.client.Pipeline, target: CredentialTarget) -> None:
    pipe.time()
    keys = _breaker_keys(target)
    if keys:
        state_key, _calls_key, failures_key, probes_key = keys
        pipe.hmget(state_key, list(STATE_FIELDS))
        pipe.zrevrange(failures_key, 0, FAILURE_SAMPLE - 1, withscores=True)
        pipe.zrange(probes_key, 0, -1, withscores=True)
    if target.token_key is not None:
        pipe.pttl(target.token_key)
        pipe.exists(f"{target.token_key}:rejected")


def _breaker_keys(target: CredentialTarget) -> tuple[str, ...]:
    """The Redis keys of the target's breaker; none without a breaker or without Redis."""
    return target.breaker.redis_keys if target.breaker is not None else ()


def _read_replies(target: CredentialTarget, replies: list[Any]) -> tuple[tuple[BreakerView, TokenView], list[Any]]:
    """The views of ``target`` from the head of ``replies`` (as :func:`_queue_reads` queued them), and the rest."""
    (seconds, microseconds), replies = replies[0], replies[1:]
    now = int(seconds) + int(microseconds) / 1_000_000
    breaker = target.breaker
    breaker_view = BreakerView(name=breaker.name if breaker is not None else None)
    if breaker is not None and _breaker_keys(target):
        (values, failures, leases), replies = replies[:3], replies[3:]
        breaker_view = _breaker_view(breaker, values, failures, leases, now)
    token_view = TokenView()
    if target.token_key is not None:
        (pttl, rejected), replies = replies[:2], replies[2:]
        pttl = int(pttl)
        cached = pttl > 0 or pttl == -1
        expires = pttl / 1000 if pttl > 0 else None
        token_view = TokenView(cached=cached, expires_in_seconds=expires, rejected=bool(rejected))
    return (breaker_view, token_view), replies


def _breaker_view(
    breaker: CircuitBreaker,
    values: Sequence[bytes | str | None],
    failures: Iterable[tuple[Any, float]],
    leases: Iterable[tuple[Any, float]],
    now: float,
) -> BreakerView:
    fields = {
        name: value.decode() if isinstance(value, bytes) else value
        for name, value in zip(STATE_FIELDS, values, strict=True)
        if value is not None
    }
    config = breaker.config
    admits_in = seconds_until_admission(
        fields, (score for _member, score in leases), now=now, half_open_max_calls=config.half_open_max_calls
    )
    stored = fields.get("state") or "closed"
    state: BreakerStateName
    if stored == "open":
        state = "half_open" if admits_in <= 0 else "open"
    elif stored in ("closed", "half_open"):
        state = "closed" if stored == "closed" else "half_open"
    else:
        state = "unknown"
    window_start = now - config.window_seconds
    in_window = sum(1 for _member, score in failures if float(score) >= window_start)
    return BreakerView(
        state=state,
        failures_in_window=in_window,
        window_seconds=config.window_seconds,
        admits_in_seconds=round(admits_in, 3),
        name=breaker.name,
    )


# -- warehouse -----------------------------------------------------------------------------------


def read_store(
    store: SyncStore, conn_ids: Sequence[str], *, letters_shown: int = LETTERS_SHOWN
) -> dict[str, StoreView]:
    """What the warehouse says about each of ``conn_ids``: three grouped queries for all of them, and
    one ``LIMIT``-ed query per credential for its oldest open dead letters.

    :raises sqlalchemy.exc.SQLAlchemyError: the warehouse could not be read.
    """
    if not conn_ids:
        return {}
    tables = store.tables
    status_table, log_table, letters = tables.credential_status, tables.sync_log, tables.dead_letters
    wanted = list(conn_ids)
    with store.engine.connect() as conn:
        statuses = {
            row.credential: StatusView(status=row.status, reason=cut(row.reason), since=row.since)
            for row in conn.execute(
                select(
                    status_table.c.credential, status_table.c.status, status_table.c.reason, status_table.c.since
                ).where(status_table.c.credential.in_(wanted))
            )
        }
        latest = (
            select(
                log_table.c.credential,
                log_table.c.resource,
                func.max(log_table.c.started_at).label("started_at"),
            )
            .where(log_table.c.credential.in_(wanted), log_table.c.status != RECOVERED)
            .group_by(log_table.c.credential, log_table.c.resource)
            .subquery()
        )
        sync_rows = conn.execute(
            select(log_table)
            .join(
                latest,
                and_(
                    log_table.c.credential == latest.c.credential,
                    log_table.c.resource == latest.c.resource,
                    log_table.c.started_at == latest.c.started_at,
                ),
            )
            .where(log_table.c.status != RECOVERED)
            .order_by(log_table.c.credential, log_table.c.resource, log_table.c.run_id)
        ).all()
        counts = {
            row.credential: (int(row.open), row.oldest)
            for row in conn.execute(
                select(
                    letters.c.credential,
                    func.count().label("open"),
                    func.min(letters.c.first_seen).label("oldest"),
                )
                .where(letters.c.credential.in_(wanted), letters.c.resolved_at.is_(None))
                .group_by(letters.c.credential)
            )
        }
        shown: dict[str, tuple[DeadLetterView, ...]] = {}
        for conn_id in wanted:
            if conn_id not in counts:
                continue
            shown[conn_id] = tuple(
                DeadLetterView(
                    id=int(row.id),
                    resource=row.resource,
                    record_id=cut(row.record_id, 100),
                    error_class=cut(row.error_class, 100) or "",
                    message=cut(row.message) or "",
                    attempts=int(row.attempts),
                    first_seen=row.first_seen,
                )
                for row in conn.execute(
                    select(
                        letters.c.id,
                        letters.c.resource,
                        letters.c.record_id,
                        letters.c.error_class,
                        letters.c.message,
                        letters.c.attempts,
                        letters.c.first_seen,
                    )
                    .where(letters.c.credential == conn_id, letters.c.resolved_at.is_(None))
                    .order_by(letters.c.id)
                    .limit(letters_shown)
                )
            )
    syncs: dict[str, dict[str, ResourceSync]] = {}
    for row in sync_rows:
        # Two rows of one resource started at the same instant: keep the first (by run id).
        syncs.setdefault(row.credential, {}).setdefault(
            row.resource,
            ResourceSync(
                resource=row.resource,
                run_id=row.run_id,
                status=row.status,
                started_at=row.started_at,
                finished_at=row.finished_at,
                pages=int(row.pages),
                records=int(row.records_successful),
                records_failed=int(row.records_failed),
                message=cut(row.message),
            ),
        )
    views = {}
    for conn_id in wanted:
        count, oldest = counts.get(conn_id, (0, None))
        letters_view = shown.get(conn_id, ())
        sample = f"{letters_view[0].error_class}: {letters_view[0].message}" if letters_view else None
        views[conn_id] = StoreView(
            status=statuses.get(conn_id, StatusView()),
            syncs=tuple(syncs.get(conn_id, {}).values()),
            dead_letters=DeadLettersView(open=count, oldest=oldest, sample_error=cut(sample), letters=letters_view),
        )
    return views


# -- both ----------------------------------------------------------------------------------------


def collect(
    targets: Sequence[CredentialTarget],
    *,
    redis_client: redis.Redis | None,
    store: SyncStore | None,
    latest_tasks: Mapping[str, tuple[TaskLink, ...]] | None = None,
    redis_down: bool = False,
) -> list[CredentialHealth]:
    """One :class:`CredentialHealth` per target, in the order given.

    ``redis_client=None`` means no Redis is configured (state is per process: nothing to show), or,
    with ``redis_down``, that its client could not even be built (e.g. its connection is missing).
    A Redis error marks the credentials of that round trip and every later one ``down`` without
    trying again; a
    warehouse error (or ``store=None``) marks every row's warehouse ``down``.
    """
    warehouse: Literal["ok", "down"] = "ok"
    stored: dict[str, StoreView] = {}
    if store is None:
        warehouse = "down"
    else:
        try:
            stored = read_store(store, [target.conn_id for target in targets])
        except SQLAlchemyError as error:
            log.warning("ServiceTitan health: the warehouse cannot be read (%s)", type(error).__name__)
            warehouse = "down"
    redis_state: RedisState = "down" if redis_down else ("ok" if redis_client is not None else "not_configured")
    shared: list[tuple[BreakerView, TokenView]] = []
    if redis_client is not None and redis_state == "ok":
        try:
            for start in range(0, len(targets), REDIS_BATCH):
                shared += read_shared_states(redis_client, targets[start : start + REDIS_BATCH])
        except redis.RedisError as error:
            log.warning("ServiceTitan health: Redis cannot be read (%s)", type(error).__name__)
    rows = []
    for index, target in enumerate(targets):
        breaker, token = BreakerView(name=target.breaker.name if target.breaker else None), TokenView()
        if redis_state == "ok":
            if index < len(shared):
                breaker, token = shared[index]
            else:
                redis_state = "down"
        view = stored.get(target.conn_id, StoreView())
        rows.append(
            CredentialHealth(
                conn_id=target.conn_id,
                sources=target.sources,
                problem=cut(target.problem),
                redis=redis_state,
                warehouse=warehouse,
                status=view.status,
                breaker=breaker,
                token=token,
                syncs=view.syncs,
                dead_letters=view.dead_letters,
                latest_tasks=(latest_tasks or {}).get(target.conn_id, ()),
            )
        )
    return rows


def to_json(value: Any) -> Any:
    """A dataclass (or list of them) as JSON-ready data: datetimes in ISO 8601, tuples as lists."""
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value
