"""Every HTTP answer and transport failure maps to the right error, over real HTTP."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import requests

from airflow_provider_servicetitan import errors
from airflow_provider_servicetitan.errors import (
    AuthenticationError,
    BadRequestError,
    CircuitBreakerOpenError,
    ConflictError,
    CredentialValidationError,
    InvalidCredentialsError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitExceededError,
    RecordValidationError,
    RetryExhaustedError,
    ServiceTitanApiError,
    ServiceTitanConnectionError,
    ServiceTitanError,
    ServiceTitanServerError,
    ServiceTitanTimeoutError,
    ServiceUnavailableError,
    TokenRefreshError,
    error_from_exception,
    error_from_response,
    is_retryable,
    parse_http_date,
    parse_retry_after,
    root_cause,
)

# path -> (status, headers, body). The handler answers whatever the test registered, with a
# ``Date`` from the local clock unless the headers give one (``None``: no ``Date`` at all).
Answer = tuple[int, dict[str, str | None], bytes]


class _Handler(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, Answer]] = {}

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            self.server.release.wait()  # type: ignore[attr-defined]  # until the test is over
            return
        if self.path.startswith("/reset"):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            return
        status, headers, body = self.answers[self.path]
        self.send_response_only(status)
        for name, value in {"Date": self.date_time_string(), **headers}.items():
            if value is not None:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, Answer]]]:
    answers: ClassVar[dict[str, Answer]] = {}
    handler = type("Handler", (_Handler,), {"answers": answers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.release.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def problem(status: int, title: str, trace_id: str = "trace-123", **extra: object) -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "traceId": trace_id, **extra}).encode()


@pytest.mark.parametrize(
    ("status", "title", "expected", "retryable"),
    [
        (400, "Bad request", BadRequestError, False),
        (401, "Unauthorized", AuthenticationError, False),
        (403, "Module not licensed", PermissionDeniedError, False),
        (404, "Not found", NotFoundError, False),
        (409, "Conflict", ConflictError, False),
        (409, "Service is suspended for maintenance", ServiceUnavailableError, True),
        (429, "Too many requests", RateLimitExceededError, True),
        (500, "Internal error", ServiceTitanServerError, True),
        (502, "Bad gateway", ServiceTitanServerError, True),
        (503, "Service unavailable", ServiceUnavailableError, True),
        (418, "Teapot", ServiceTitanApiError, False),
    ],
)
def test_status_maps_to_class(http_server, status, title, expected, retryable):
    base, answers = http_server
    answers["/crm/v2/tenant/1/customers?page=2"] = (
        status,
        {"Content-Type": "application/json"},
        problem(status, title),
    )
    response = requests.get(f"{base}/crm/v2/tenant/1/customers?page=2", timeout=5)

    error = error_from_response(response)

    assert type(error) is expected
    assert error.retryable is retryable
    assert is_retryable(error) is retryable
    assert error.status == status
    assert error.title == title
    assert error.trace_id == "trace-123"
    assert error.path == "/crm/v2/tenant/1/customers"
    assert "traceId=trace-123" in str(error)
    assert "page=2" not in str(error)


def test_field_errors_and_detail_are_kept(http_server):
    base, answers = http_server
    body = problem(400, "Validation failed", detail="pageSize too large", errors={"pageSize": ["must be <= 5000"]})
    answers["/x"] = (400, {"Content-Type": "application/json"}, body)

    error = error_from_response(requests.get(f"{base}/x", timeout=5))

    assert isinstance(error, BadRequestError)
    assert error.detail == "pageSize too large"
    assert error.field_errors == {"pageSize": ["must be <= 5000"]}
    assert "pageSize: must be <= 5000" in str(error)


def test_rate_limit_reads_retry_after_seconds(http_server):
    base, answers = http_server
    answers["/x"] = (429, {"Retry-After": "7"}, problem(429, "Too many requests"))

    error = error_from_response(requests.get(f"{base}/x", timeout=5))

    assert isinstance(error, RateLimitExceededError)
    assert error.retry_after == 7.0


def test_non_json_error_body_still_maps(http_server):
    base, answers = http_server
    answers["/x"] = (502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>")

    error = error_from_response(requests.get(f"{base}/x", timeout=5))

    assert isinstance(error, ServiceTitanServerError)
    assert error.trace_id is None
    assert error.title == "Bad Gateway"


def test_retry_after_http_date():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(header, now=now.timestamp()) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now.timestamp()) == 0.0


@pytest.mark.parametrize("value", [None, "", "  ", "soon", "nan", "inf"])
def test_retry_after_unreadable_is_none(value):
    assert parse_retry_after(value) is None


@pytest.mark.parametrize(
    "server_ahead",
    [
        pytest.param(-600, id="worker-10-min-ahead"),
        pytest.param(0, id="same-clock"),
        pytest.param(600, id="worker-10-min-behind"),
    ],
)
def test_retry_after_date_is_measured_from_the_servers_date(http_server, server_ahead):
    base, answers = http_server
    server_now = math.floor(time.time()) + server_ahead
    answers["/x"] = (
        429,
        {
            "Date": format_datetime(datetime.fromtimestamp(server_now, UTC), usegmt=True),
            "Retry-After": format_datetime(datetime.fromtimestamp(server_now + 30, UTC), usegmt=True),
        },
        problem(429, "Too many requests"),
    )

    error = error_from_response(requests.get(f"{base}/x", timeout=5))

    assert isinstance(error, RateLimitExceededError)
    assert error.retry_after == 30.0


@pytest.mark.parametrize("date", [None, "yesterday-ish"], ids=["no-date", "unreadable-date"])
def test_retry_after_date_without_a_readable_server_date_is_measured_on_the_local_clock(http_server, date):
    base, answers = http_server
    retry_at = math.floor(time.time()) + 3600
    answers["/x"] = (
        429,
        {"Date": date, "Retry-After": format_datetime(datetime.fromtimestamp(retry_at, UTC), usegmt=True)},
        problem(429, "Too many requests"),
    )
    response = requests.get(f"{base}/x", timeout=5)

    before = time.time()
    error = error_from_response(response)
    after = time.time()

    assert isinstance(error, RateLimitExceededError)
    assert retry_at - after <= error.retry_after <= retry_at - before


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Thu, 01 Jan 2026 12:00:00 GMT", datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp()),
        ("Thursday, 01-Jan-26 12:00:00 GMT", datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp()),
        ("Thu Jan  1 12:00:00 2026", datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp()),
        (None, None),
        ("", None),
        ("30", None),
        ("Thu, 32 Jan 2026 12:00:00 GMT", None),
    ],
)
def test_http_dates_in_every_form_the_rfc_allows(value, expected):
    assert parse_http_date(value) == expected


def test_connection_refused_maps_to_connection_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(f"http://127.0.0.1:{port}/crm/v2/tenant/1/customers", timeout=2)

    error = error_from_exception(caught.value)

    assert isinstance(error, ServiceTitanConnectionError)
    assert error.retryable
    assert "/crm/v2/tenant/1/customers" in str(error)


def test_connection_reset_maps_to_connection_error(http_server):
    base, _ = http_server
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(f"{base}/reset", timeout=5)

    assert isinstance(error_from_exception(caught.value), ServiceTitanConnectionError)
    assert is_retryable(caught.value)


def test_read_timeout_maps_to_timeout_error(http_server):
    base, _ = http_server
    with pytest.raises(requests.Timeout) as caught:
        requests.get(f"{base}/slow", timeout=0.2)

    error = error_from_exception(caught.value)

    assert isinstance(error, ServiceTitanTimeoutError)
    assert error.retryable


def test_http_error_with_response_maps_by_status(http_server):
    base, answers = http_server
    answers["/x"] = (404, {}, problem(404, "Not found"))
    response = requests.get(f"{base}/x", timeout=5)
    with pytest.raises(requests.HTTPError) as caught:
        response.raise_for_status()

    assert isinstance(error_from_exception(caught.value), NotFoundError)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (InvalidCredentialsError(status=401, title="invalid_client"), False),
        (TokenRefreshError(status=503, title="token endpoint down"), True),
        (CredentialValidationError("tenant_id", "an integer", conn_id="st_acme"), False),
        (RecordValidationError("missing id", resource="customers"), False),
        (CircuitBreakerOpenError("acme", 12.5), True),
        (ServiceTitanTimeoutError("timed out"), True),
        (ValueError("bug"), False),
        (TypeError("bug"), False),
    ],
)
def test_every_error_states_retryable(error, retryable):
    assert is_retryable(error) is retryable


def test_every_error_class_declares_retryable():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, ServiceTitanError)]
    assert len(classes) >= 18
    for cls in classes:
        assert "retryable" in dir(cls), cls


def test_retry_exhausted_follows_its_last_error():
    server_error = ServiceTitanServerError(status=500, title="boom", trace_id="t-1")
    exhausted = RetryExhaustedError(3, server_error)
    assert exhausted.attempts == 3
    assert exhausted.__cause__ is server_error
    assert exhausted.retryable is True
    assert "3 attempts" in str(exhausted)
    assert "t-1" in str(exhausted)
    assert RetryExhaustedError(1, BadRequestError(status=400)).retryable is False


def test_root_cause_unwraps_every_retry_that_gave_up():
    rate_limited = RateLimitExceededError(status=429, retry_after=7.0)
    inner = RetryExhaustedError(3, rate_limited)
    outer = RetryExhaustedError(2, inner)

    assert root_cause(outer) is rate_limited
    assert root_cause(inner) is rate_limited


def test_root_cause_of_any_other_error_is_the_error_itself():
    breaker_open = CircuitBreakerOpenError("tenant-1", 30)
    plain = ValueError("bug")

    assert root_cause(breaker_open) is breaker_open
    assert root_cause(plain) is plain


def test_credential_validation_names_field_and_expectation():
    error = CredentialValidationError("tenant_id", "an integer, got 'abc'", conn_id="st_acme")
    assert error.field == "tenant_id"
    assert str(error) == "connection 'st_acme': field 'tenant_id' is invalid: expected an integer, got 'abc'"


def test_circuit_open_error_reports_wait():
    error = CircuitBreakerOpenError("tenant-1", -3)
    assert error.retry_after == 0.0
    assert error.breaker_name == "tenant-1"
    assert "tenant-1" in str(error)
