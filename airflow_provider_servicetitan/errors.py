"""The provider's exception hierarchy.

Every error says whether it is worth retrying (``retryable``), and API errors carry what
ServiceTitan support asks for: the HTTP status, the RFC 7807 title/detail, field errors and the
``traceId``. :func:`error_from_response` and :func:`error_from_exception` are the one place where
an HTTP answer or a transport failure becomes one of these classes.

Messages are built only from the status, the problem document and the request path: never from
request headers or bodies, so a client secret, app key or token cannot leak into a message.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping
from datetime import UTC
from typing import Any, ClassVar
from urllib.parse import urlparse

import requests

# Maintenance answers (409 on reporting, 503 elsewhere) say so in their title or detail.
_MAINTENANCE_MARKERS = ("maintenance", "suspended")


class ServiceTitanError(Exception):
    """Base of every error raised by this provider."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ServiceTitanApiError(ServiceTitanError):
    """ServiceTitan answered with an error status.

    :param status: HTTP status code.
    :param title: RFC 7807 ``title``.
    :param detail: RFC 7807 ``detail``, if any.
    :param field_errors: RFC 7807 ``errors``: field name -> messages.
    :param trace_id: ServiceTitan's ``traceId`` (quote it to ServiceTitan support).
    :param path: request path (no query string, so no parameters leak).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        title: str | None = None,
        detail: str | None = None,
        field_errors: Mapping[str, list[str]] | None = None,
        trace_id: str | None = None,
        path: str | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.field_errors: dict[str, list[str]] = dict(field_errors or {})
        self.trace_id = trace_id
        self.path = path
        super().__init__(message or self._describe())

    def _describe(self) -> str:
        parts = [f"ServiceTitan answered {self.status or 'an error'}"]
        if self.path:
            parts.append(f"for {self.path}")
        text = " ".join(parts)
        if self.title:
            text += f": {self.title}"
        if self.detail and self.detail != self.title:
            text += f" ({self.detail})"
        if self.field_errors:
            fields = "; ".join(f"{name}: {', '.join(msgs)}" for name, msgs in self.field_errors.items())
            text += f" [fields: {fields}]"
        if self.trace_id:
            text += f" [traceId={self.trace_id}]"
        return text


class ServiceTitanServerError(ServiceTitanApiError):
    """A 5xx answer: the service failed; trying again later may work."""

    retryable = True


class ServiceUnavailableError(ServiceTitanServerError):
    """503, or a 409 "suspended for maintenance": the service is temporarily not serving."""


class MalformedResponseError(ServiceTitanApiError):
    """A success answer whose body cannot be read (not JSON, cut short): asking again may work."""

    retryable = True


class ServiceTitanTimeoutError(ServiceTitanError):
    """The request did not complete within the client's timeout."""

    retryable = True


class ServiceTitanConnectionError(ServiceTitanError):
    """The connection failed or was reset before a complete answer arrived."""

    retryable = True


class RateLimitExceededError(ServiceTitanApiError):
    """429: too many requests. ``retry_after`` is how long ServiceTitan asked us to wait."""

    retryable = True

    def __init__(self, message: str | None = None, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)

    def _describe(self) -> str:
        text = super()._describe()
        if self.retry_after is not None:
            text += f" [retry after {self.retry_after:g}s]"
        return text


class AuthenticationError(ServiceTitanApiError):
    """The request was not authenticated (401)."""


class InvalidCredentialsError(AuthenticationError):
    """The client id / secret / app key are rejected: a person must fix the connection."""


class TokenRefreshError(AuthenticationError):
    """A new token could not be obtained for a transient reason (token endpoint down, throttled)."""

    retryable = True


class PermissionDeniedError(ServiceTitanApiError):
    """403: the tenant has not licensed this module or the app lacks the scope."""


class NotFoundError(ServiceTitanApiError):
    """404: no such resource or record."""


class BadRequestError(ServiceTitanApiError):
    """400: the request itself is wrong; sending it again will not help."""


class ConflictError(ServiceTitanApiError):
    """409 that is not a maintenance answer: the request conflicts with the record's state."""


class CredentialValidationError(ServiceTitanError):
    """A connection is misconfigured. ``field`` names the field, the message says what is expected."""

    def __init__(self, field: str, expected: str, *, conn_id: str | None = None) -> None:
        self.field = field
        self.expected = expected
        self.conn_id = conn_id
        where = f"connection {conn_id!r}" if conn_id else "the connection"
        super().__init__(f"{where}: field {field!r} is invalid: expected {expected}")


class RecordValidationError(ServiceTitanError):
    """A record from the API is malformed; it is parked as a dead letter, never dropped."""

    def __init__(self, message: str, *, resource: str | None = None, record_id: object | None = None) -> None:
        self.resource = resource
        self.record_id = record_id
        super().__init__(message)


class CircuitBreakerOpenError(ServiceTitanError):
    """The circuit breaker refused the call without making it.

    ``retry_after`` is how many seconds remain until the breaker will admit a probe.
    """

    retryable = True

    def __init__(self, breaker_name: str, retry_after: float) -> None:
        self.breaker_name = breaker_name
        self.retry_after = max(0.0, retry_after)
        super().__init__(
            f"circuit breaker {breaker_name!r} is open; a probe will be admitted in {self.retry_after:.1f}s"
        )


class RetryExhaustedError(ServiceTitanError):
    """Every attempt failed. The last error is ``last_error`` and also ``__cause__``.

    Worth retrying later (e.g. by Airflow) exactly when the last error was.
    """

    def __init__(self, attempts: int, last_error: BaseException) -> None:
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(
            f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}: {type(last_error).__name__}: {last_error}"
        )
        self.__cause__ = last_error

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return is_retryable(self.last_error)


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is worth another attempt.

    Provider errors say so themselves; a transport error from ``requests`` is mapped first; any
    other exception (``ValueError``, ``TypeError``, a bug) is not retryable.
    """
    if isinstance(error, ServiceTitanError):
        return bool(error.retryable)
    if isinstance(error, requests.RequestException):
        return bool(error_from_exception(error).retryable)
    return False


def root_cause(error: BaseException) -> BaseException:
    """The error a retry gave up on: ``error`` with every :class:`RetryExhaustedError` unwrapped.

    A retry nested in another retry wraps twice; any other error is its own root cause.
    """
    while isinstance(error, RetryExhaustedError):
        error = error.last_error
    return error


def parse_http_date(value: str | None) -> float | None:
    """Seconds since the epoch of an HTTP date (``Date``, ``Retry-After``), or ``None`` if unreadable."""
    if value is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    An HTTP date is a moment on the server's clock, so it is measured from ``now`` on that clock:
    pass the answer's ``Date`` (see :func:`error_from_response`). Without ``now`` it is measured
    from the local clock, which is wrong by however far the two clocks disagree.

    Returns ``None`` when the header is absent or unreadable, and never a negative number.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = parse_http_date(value)
        if when is None:
            return None
        seconds = when - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _problem_document(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _field_errors(problem: Mapping[str, Any]) -> dict[str, list[str]]:
    errors = problem.get("errors")
    if not isinstance(errors, dict):
        return {}
    return {
        str(name): [str(m) for m in msgs] if isinstance(msgs, list) else [str(msgs)] for name, msgs in errors.items()
    }


def _is_maintenance(title: str | None, detail: str | None) -> bool:
    text = f"{title or ''} {detail or ''}".lower()
    return any(marker in text for marker in _MAINTENANCE_MARKERS)


def error_class_for_status(status: int, *, maintenance: bool = False) -> type[ServiceTitanApiError]:
    """The exception class for an HTTP error status."""
    if status == 429:
        return RateLimitExceededError
    if status == 503 or (status == 409 and maintenance):
        return ServiceUnavailableError
    if status >= 500:
        return ServiceTitanServerError
    by_status: dict[int, type[ServiceTitanApiError]] = {
        400: BadRequestError,
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        409: ConflictError,
    }
    return by_status.get(status, ServiceTitanApiError)


def error_from_response(response: requests.Response) -> ServiceTitanApiError:
    """Turn an error answer into the matching exception, keeping status, title and ``traceId``."""
    problem = _problem_document(response)
    title = problem.get("title") if isinstance(problem.get("title"), str) else None
    detail = problem.get("detail") if isinstance(problem.get("detail"), str) else None
    trace_id = problem.get("traceId") or response.headers.get("traceId") or response.headers.get("X-Trace-Id")
    status = response.status_code
    cls = error_class_for_status(status, maintenance=_is_maintenance(title, detail))
    kwargs: dict[str, Any] = {
        "status": status,
        "title": title or response.reason or None,
        "detail": detail,
        "field_errors": _field_errors(problem),
        "trace_id": str(trace_id) if trace_id else None,
        "path": urlparse(response.url).path if response.url else None,
    }
    if cls is RateLimitExceededError:
        # The server's ``Date`` is "now" for a Retry-After date: the two share the server's clock,
        # whatever the local clock says.
        retry_after = parse_retry_after(
            response.headers.get("Retry-After"), now=parse_http_date(response.headers.get("Date"))
        )
        return RateLimitExceededError(retry_after=retry_after, **kwargs)
    return cls(**kwargs)


def error_from_exception(error: requests.RequestException) -> ServiceTitanError:
    """Turn a ``requests`` transport failure into the matching provider error."""
    request = error.request
    url = getattr(request, "url", None)
    where = f" for {urlparse(url).path}" if url else ""
    kind = type(error).__name__
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error_from_response(error.response)
    if isinstance(error, requests.Timeout):
        # ConnectTimeout is both a Timeout and a ConnectionError: it is reported as a timeout.
        return ServiceTitanTimeoutError(f"request timed out{where} ({kind})")
    if isinstance(error, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return ServiceTitanConnectionError(f"connection failed{where} ({kind})")
    if isinstance(error, requests.exceptions.ContentDecodingError):
        return ServiceTitanConnectionError(f"incomplete or corrupt answer{where} ({kind})")
    return ServiceTitanError(f"request failed{where} ({kind})")
