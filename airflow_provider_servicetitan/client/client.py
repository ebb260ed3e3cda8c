"""ServiceTitan API client: every call goes through retry -> circuit breaker -> HTTP.

Retry is the outer layer and the breaker the inner one (as resilience4j orders them): every
attempt passes the breaker, so once any worker opens it the others stop calling too, and an open
breaker ends the retries unless it will admit a probe within the retry's remaining time.

A 401 means the token is no longer valid: it is dropped (only if it is still the cached one),
renewed, and the call repeated once. A second 401 means the credentials themselves are bad.

Rate limit: every request sent (each attempt, and the repeat after a 401) first takes a slot from
the tenant's :class:`~airflow_provider_servicetitan.resilience.ratelimit.RateLimiter`, shared by
every worker on the same app key and tenant (:func:`api_rate_limiter`). A 429 pauses that limiter
for its ``Retry-After`` (stretched by up to 10 %), so every worker on the tenant waits, not only the
one that was refused; the retry policy then retries the call without counting a failed attempt. A
slot further away than ``max_rate_limit_wait`` (a long pause) is not waited for in the attempt: it
raises :class:`RateLimitExceededError` without sending anything, and the retry policy waits or
gives up (an operator may then defer) as for a 429.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.client.credentials import ServiceTitanCredentials
from airflow_provider_servicetitan.errors import (
    AuthenticationError,
    InvalidCredentialsError,
    MalformedResponseError,
    RateLimitExceededError,
    ServiceTitanConnectionError,
    ServiceTitanError,
    ServiceTitanTimeoutError,
    error_from_exception,
    error_from_response,
)
from airflow_provider_servicetitan.resilience.breaker import CircuitBreaker
from airflow_provider_servicetitan.resilience.checks import is_finite_number
from airflow_provider_servicetitan.resilience.ratelimit import RateLimiter, RateLimitWaitTooLong
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.resilience.shared_state import DEFAULT_REDIS_RECHECK_SECONDS

log = logging.getLogger(__name__)

MAX_IDS_PER_REQUEST = 50
#: ServiceTitan's published limit: API calls per second per application (app key) per tenant.
DEFAULT_RATE_LIMIT_PER_SECOND = 60.0
#: The longest wait for a rate-limiter slot inside one attempt (seconds); longer waits go to the retry policy.
DEFAULT_MAX_RATE_LIMIT_WAIT = 5.0
#: A 429 pauses the tenant's limiter for ``Retry-After * (1 + uniform(0, PAUSE_JITTER))``.
PAUSE_JITTER = 0.1
#: The pause after a 429 that says nothing of when to come back (seconds).
DEFAULT_PAUSE_SECONDS = 1.0
_RNG = random.Random()  # noqa: S311 - jitter, not cryptography
# How much of a transport error's own text (redacted) is kept in our error message.
_DETAIL_CHARS = 300
# Transport errors built from a message alone (the others carry an HTTP answer of their own).
_PLAIN_ERRORS = (ServiceTitanError, ServiceTitanTimeoutError, ServiceTitanConnectionError)


def api_rate_limiter_name(credentials: ServiceTitanCredentials) -> str:
    """The limiter name of a credential's API calls: one per API host, app key and tenant.

    ServiceTitan counts calls per application and tenant, whatever the client id, so every
    credential of one app key on one tenant shares it. The app key is hashed: never a secret in a key.
    """
    digest = hashlib.sha256(f"{credentials.base_url}|{credentials.app_key}".encode()).hexdigest()[:16]
    return f"api:{credentials.tenant_id}:{digest}"


def api_rate_limiter(
    credentials: ServiceTitanCredentials,
    redis_client: Any,
    *,
    rate_per_second: float = DEFAULT_RATE_LIMIT_PER_SECOND,
    namespace: str = "servicetitan",
    redis_recheck_seconds: float = DEFAULT_REDIS_RECHECK_SECONDS,
    **options: Any,
) -> RateLimiter:
    """The shared limiter of a credential's API calls (``options``: see :class:`RateLimiter`)."""
    return RateLimiter(
        api_rate_limiter_name(credentials),
        redis_client,
        rate_per_second=rate_per_second,
        namespace=namespace,
        redis_recheck_seconds=redis_recheck_seconds,
        **options,
    )


@dataclass(frozen=True)
class ListPage:
    """One page of a list endpoint."""

    page: int
    data: list[Any]
    has_more: bool
    total_count: int | None


@dataclass(frozen=True)
class ExportPage:
    """One page of an export feed. ``continue_from`` is the bookmark to store once ``data`` is stored."""

    data: list[Any]
    continue_from: str | None
    has_more: bool


class ServiceTitanClient:
    """Talks to one tenant of ServiceTitan with one credential.

    A context manager: leaving it (or calling :meth:`close`) closes its HTTP session and the
    token manager's.

    :param token_manager: supplies (shared, self-renewing) access tokens for the credential.
    :param breaker: the credential's circuit breaker, shared by all workers.
    :param retry_policy: how failed attempts are retried.
    :param rate_limiter: the tenant's shared limiter (see :func:`api_rate_limiter`); ``None``
        sends without pacing (a 429 is still retried).
    :param max_rate_limit_wait: the longest wait for a slot inside an attempt, in seconds (also
        at most the retry policy's ``max_retry_after``, if set).
    :param timeout: (connect, read) timeouts in seconds. ServiceTitan gives up around 100 s.
    """

    def __init__(
        self,
        token_manager: TokenManager,
        *,
        breaker: CircuitBreaker,
        retry_policy: RetryPolicy,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (5.0, 60.0),
        page_size: int = 500,
        rate_limiter: RateLimiter | None = None,
        max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT,
        rng: random.Random | None = None,
    ) -> None:
        self.credentials = token_manager.credentials
        self.token_manager = token_manager
        self.breaker = breaker
        self.retry_policy = retry_policy
        self.session = session or requests.Session()
        self.timeout = timeout
        self.page_size = page_size
        self.rate_limiter = rate_limiter
        if not is_finite_number(max_rate_limit_wait) or max_rate_limit_wait < 0:
            raise ValueError(f"max_rate_limit_wait must be a finite number >= 0, got {max_rate_limit_wait!r}")
        if retry_policy.max_retry_after is not None:
            max_rate_limit_wait = min(max_rate_limit_wait, retry_policy.max_retry_after)
        self.max_rate_limit_wait = max_rate_limit_wait
        self._rng = rng or _RNG

    @property
    def tenant_id(self) -> int:
        return self.credentials.tenant_id

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """Make one API call (with retries) and return the decoded JSON body (``None`` for 204)."""
        return self.retry_policy.call(self._attempt, method, path, params, json)

    def pages(self, resource: str, *, page_size: int | None = None, **filters: Any) -> Iterator[ListPage]:
        """Yield every page of a list endpoint. ``active`` defaults to ``Any``: a sync wants all records."""
        path = get_resource(resource).list_path(self.tenant_id)
        params: dict[str, Any] = {"active": "Any", **filters, "pageSize": page_size or self.page_size}
        page = 1
        while True:
            body = self.request("GET", path, params={**params, "page": page})
            listed = ListPage(
                page=page,
                data=list(body.get("data") or []),
                has_more=bool(body.get("hasMore")),
                total_count=body.get("totalCount"),
            )
            yield listed
            if not listed.has_more:
                return
            page += 1

    def export(
        self,
        resource: str,
        continue_from: str | None = None,
        include_recent_changes: bool = False,
    ) -> Iterator[ExportPage]:
        """Yield the export feed page by page from ``continue_from`` until it is caught up.

        Only one page is held at a time; the caller stores each page and its ``continue_from``
        together before asking for the next one.
        """
        path = get_resource(resource).export_path(self.tenant_id)
        bookmark = continue_from
        while True:
            params: dict[str, Any] = {"includeRecentChanges": str(include_recent_changes).lower()}
            if bookmark:
                params["from"] = bookmark
            body = self.request("GET", path, params=params)
            page = ExportPage(
                data=list(body.get("data") or []),
                continue_from=body.get("continueFrom") or bookmark,
                has_more=bool(body.get("hasMore")),
            )
            yield page
            if not page.has_more:
                return
            bookmark = page.continue_from

    def get_by_ids(self, resource: str, ids: Iterable[int | str]) -> list[Any]:
        """Fetch records by id through the list endpoint, 50 ids per request, active or not."""
        wanted = [str(i) for i in ids]
        records: list[Any] = []
        for start in range(0, len(wanted), MAX_IDS_PER_REQUEST):
            chunk = wanted[start : start + MAX_IDS_PER_REQUEST]
            for page in self.pages(resource, ids=",".join(chunk), page_size=MAX_IDS_PER_REQUEST):
                records.extend(page.data)
        return records

    def close(self) -> None:
        """Close the HTTP sessions: the API's and the token endpoint's."""
        self.session.close()
        self.token_manager.close()

    def __enter__(self) -> ServiceTitanClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _attempt(self, method: str, path: str, params: Mapping[str, Any] | None, json: Any) -> Any:
        """One attempt: a token, the call through the breaker, and one renewal on a 401."""
        token = self.token_manager.get_token()
        self._take_slot(path)
        try:
            return self.breaker.call(self._send, token, method, path, params, json)
        except AuthenticationError as first:
            if isinstance(first, InvalidCredentialsError) or first.retryable:
                raise
            log.info("ServiceTitan answered 401 for %s; renewing the token and repeating once", path)
            self.token_manager.invalidate(token)
            renewed = self.token_manager.get_token()
            self._take_slot(path)
            try:
                return self.breaker.call(self._send, renewed, method, path, params, json)
            except AuthenticationError as second:
                if second.retryable:
                    raise
                raise InvalidCredentialsError(
                    f"ServiceTitan refused a freshly issued token for tenant {self.tenant_id}: "
                    f"the credentials or the app key are not valid for this tenant ({second})",
                    status=second.status,
                    title=second.title,
                    trace_id=second.trace_id,
                    path=second.path,
                ) from None

    def _take_slot(self, path: str) -> None:
        """Wait for a slot of the tenant's rate limiter, or raise a 429 of our own if it is far away."""
        limiter = self.rate_limiter
        if limiter is None:
            return
        try:
            limiter.acquire(max_wait=self.max_rate_limit_wait)
        except RateLimitWaitTooLong as far:
            raise RateLimitExceededError(
                f"rate limit of tenant {self.tenant_id}: the next slot is {far.retry_after:.2f}s away "
                "(another worker was answered 429); not sent",
                retry_after=far.retry_after,
                path=path,
            ) from None

    def _pause(self, error: RateLimitExceededError) -> None:
        """ServiceTitan answered 429: nobody on this tenant sends until its Retry-After has passed."""
        limiter = self.rate_limiter
        if limiter is None:
            return
        asked = error.retry_after if error.retry_after is not None else DEFAULT_PAUSE_SECONDS
        seconds = asked * (1.0 + self._rng.uniform(0.0, PAUSE_JITTER))
        limiter.pause(seconds)
        log.info(
            "ServiceTitan answered 429 for tenant %s (traceId=%s); every worker on it pauses %.2fs",
            self.tenant_id,
            error.trace_id or "-",
            seconds,
        )

    def _send(self, token: str, method: str, path: str, params: Mapping[str, Any] | None, json: Any) -> Any:
        url = f"{self.credentials.base_url}{path}"
        headers = {
            "Authorization": f"Bearer {token}",
            "ST-App-Key": self.credentials.app_key,
            "Accept": "application/json",
        }
        response = self._transmit(method, url, params, json, headers, token)
        if response.status_code >= 400:
            error = error_from_response(response)
            if isinstance(error, RateLimitExceededError):
                self._pause(error)
            raise error
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise MalformedResponseError(
                status=response.status_code,
                title="answer is not valid JSON",
                path=path,
                trace_id=response.headers.get("traceId"),
            ) from None

    def _transmit(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        json: Any,
        headers: Mapping[str, str],
        token: str,
    ) -> requests.Response:
        """Send one request. A transport failure becomes a provider error raised outside the
        ``except`` block, so the ``requests`` exception (whose text may quote a header value) is
        neither its cause nor its context; what it said is kept, without secrets, in the message."""
        failure: ServiceTitanError | None = None
        try:
            return self.session.request(
                method, url, params=params, json=json, headers=dict(headers), timeout=self.timeout
            )
        except requests.RequestException as exc:
            error = error_from_exception(exc)
            detail = self.credentials.redact(str(exc), token)[:_DETAIL_CHARS]
            failure = type(error)(f"{error}: {detail}") if type(error) in _PLAIN_ERRORS else error
        raise failure
