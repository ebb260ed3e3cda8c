"""Metrics reach a real Airflow metrics backend, with their names, values and tags.

The ``statsd`` package is not installed (Airflow's StatsD backend needs it, custom client
included), so the backend under test is Airflow's OpenTelemetry one: ``[metrics] otel_on``,
exporting OTLP/HTTP to a collector started here on 127.0.0.1. Airflow builds the backend from its
configuration exactly as its task runner does; the test decodes what arrives over HTTP.
Exports happen only when the test flushes the meter provider (the periodic export is set to an
hour), and a flush returns after the collector has answered, so nothing waits on time.
"""

from __future__ import annotations

import atexit
import gzip
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
from airflow.sdk._shared.observability.metrics.otel_logger import flush_otel_metrics
from airflow.sdk.configuration import conf
from airflow.sdk.observability import stats
from airflow.sdk.observability.metrics.stats_utils import get_stats_factory
from opentelemetry import metrics as otel_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from airflow_provider_servicetitan import metrics
from airflow_provider_servicetitan.client.auth import TokenManager
from airflow_provider_servicetitan.errors import (
    InvalidCredentialsError,
    RateLimitExceededError,
    RetryExhaustedError,
    ServiceTitanServerError,
)
from airflow_provider_servicetitan.resilience.breaker import BreakerConfig, CircuitBreaker
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from airflow_provider_servicetitan.sync.engine import ResourceSummary
from airflow_provider_servicetitan.sync.recovery import RecoveryResult
from tests.helpers import credentials_for
from tests.resilience.test_breaker import Clock

CREDENTIAL = "servicetitan_acme"
PREFIX = "airflow."  # the OpenTelemetry backend's default [metrics] otel_prefix


@dataclass(frozen=True)
class Point:
    """One data point as the collector received it."""

    name: str
    kind: str  # "sum" (counter), "gauge", "exponential_histogram" (timing)
    value: float  # the counter's total, the gauge's value, the histogram's sum
    count: int | None  # observations of a histogram
    tags: dict[str, str]


class _Collector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.bodies.append(body)  # type: ignore[attr-defined]
        reply = ExportMetricsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


class OtlpSink:
    """An OTLP/HTTP metrics collector on 127.0.0.1 that keeps every request body."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
        self.server.bodies = []  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/metrics"

    @property
    def bodies(self) -> list[bytes]:
        return self.server.bodies  # type: ignore[attr-defined,no-any-return]

    def collect(self) -> list[Point]:
        """Flush Airflow's meter provider and decode the export (counters are cumulative)."""
        received = len(self.bodies)
        assert otel_metrics.get_meter_provider().force_flush(timeout_millis=10_000)  # type: ignore[attr-defined]
        points: list[Point] = []
        for body in self.bodies[received:]:
            request = ExportMetricsServiceRequest.FromString(body)
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        points.extend(_points(metric))
        return points

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _points(metric: object) -> Iterator[Point]:
    kind = metric.WhichOneof("data")  # type: ignore[attr-defined]
    for point in getattr(metric, kind).data_points:
        tags = {item.key: item.value.string_value for item in point.attributes}
        if kind == "exponential_histogram":
            yield Point(metric.name, kind, point.sum, point.count, tags)  # type: ignore[attr-defined]
        else:
            value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
            yield Point(metric.name, kind, value, None, tags)  # type: ignore[attr-defined]


def named(points: list[Point], stat: str) -> list[Point]:
    return sorted((p for p in points if p.name == PREFIX + stat), key=lambda p: sorted(p.tags.items()))


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpSink]:
    collector = OtlpSink()
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "False")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_DATADOG_ENABLED", "False")
    monkeypatch.setenv("AIRFLOW__METRICS__OTEL_ON", "True")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
    # What Airflow's task runner does at start-up, with the configuration above.
    backend = get_stats_factory()()
    stats.initialize(factory=lambda: backend, export_legacy_names=conf.getboolean("metrics", "legacy_names_on"))
    yield collector
    # Shutting down exports what is left; the exit-time flush Airflow registered has nothing to do.
    otel_metrics.get_meter_provider().shutdown()  # type: ignore[attr-defined]
    atexit.unregister(flush_otel_metrics)
    stats.initialize(factory=NoStatsLogger, export_legacy_names=False)
    collector.close()


def test_error_counts_by_class_and_credential(sink):
    metrics.count_error(CREDENTIAL, InvalidCredentialsError(status=401))
    metrics.count_error(CREDENTIAL, InvalidCredentialsError(status=401))
    metrics.count_error("servicetitan_other", RetryExhaustedError(3, RateLimitExceededError(status=429)))

    points = sink.collect()

    assert named(points, metrics.ERRORS) == [
        Point(
            "airflow.servicetitan.errors",
            "sum",
            2,
            None,
            {"credential": CREDENTIAL, "error_class": "InvalidCredentialsError"},
        ),
        Point(
            "airflow.servicetitan.errors",
            "sum",
            1,
            None,
            {"credential": "servicetitan_other", "error_class": "RateLimitExceededError"},
        ),
    ]


def test_retries_through_the_retry_policy_listener(sink):
    listener = metrics.MetricsListener(CREDENTIAL)
    failures = iter([ServiceTitanServerError(status=502), RateLimitExceededError(status=429, retry_after=0)])

    def flaky() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    policy = RetryPolicy(max_attempts=3, base_delay=0, max_delay=0, sleep=lambda _: None, listener=listener.on_retry)
    assert policy.call(flaky) == "ok"

    assert [(p.value, p.tags) for p in named(sink.collect(), metrics.RETRIES)] == [
        (1, {"credential": CREDENTIAL, "error_class": "RateLimitExceededError"}),
        (1, {"credential": CREDENTIAL, "error_class": "ServiceTitanServerError"}),
    ]


def test_breaker_transitions_and_state_gauge(sink):
    listener = metrics.MetricsListener(CREDENTIAL)
    clock = Clock()
    breaker = CircuitBreaker("tenant-42", None, BreakerConfig(), clock=clock)
    breaker.add_listener(listener.on_transition)
    breaker.force_open(10)

    points = sink.collect()
    assert [(p.value, p.tags) for p in named(points, metrics.BREAKER_STATE)] == [
        (2, {"credential": CREDENTIAL, "breaker": "tenant-42"})
    ]

    clock.advance(11)
    assert breaker.state == "half_open"
    assert [p.value for p in named(sink.collect(), metrics.BREAKER_STATE)] == [1]

    breaker.reset()
    points = sink.collect()
    assert [p.value for p in named(points, metrics.BREAKER_STATE)] == [0]
    base = {"credential": CREDENTIAL, "breaker": "tenant-42"}
    assert [(p.kind, p.value, p.tags) for p in named(points, metrics.BREAKER_TRANSITIONS)] == [
        ("sum", 1, {**base, "from_state": "closed", "to_state": "open"}),
        ("sum", 1, {**base, "from_state": "half_open", "to_state": "closed"}),
        ("sum", 1, {**base, "from_state": "open", "to_state": "half_open"}),
    ]


def test_token_renewals_carry_no_secret(sink, sandbox):
    credentials = credentials_for(sandbox)
    listener = metrics.MetricsListener(CREDENTIAL)
    tokens = TokenManager(credentials, None, on_renew=listener.on_renew)
    token = tokens.get_token()
    tokens.invalidate(token)
    tokens.get_token()

    points = sink.collect()

    assert [(p.value, p.tags) for p in named(points, metrics.TOKEN_RENEWALS)] == [(2, {"credential": CREDENTIAL})]
    exported = b"".join(sink.bodies)
    for secret in (credentials.client_secret, credentials.app_key, token):
        assert secret.encode() not in exported


def test_resource_summary_counts_records_and_times_the_sync(sink):
    summary = ResourceSummary("customers", "partial", pages=3, processed=120, successful=118, failed=2)
    metrics.emit_resource_summary(CREDENTIAL, summary, 1.5)
    metrics.emit_resource_summary(CREDENTIAL, ResourceSummary("jobs", "success", successful=7), 0.25)

    points = sink.collect()

    customers = {"credential": CREDENTIAL, "resource": "customers"}
    jobs = {"credential": CREDENTIAL, "resource": "jobs"}
    assert [(p.value, p.tags) for p in named(points, metrics.RECORDS_SYNCED)] == [(118, customers), (7, jobs)]
    assert [(p.value, p.tags) for p in named(points, metrics.RECORDS_FAILED)] == [(2, customers), (0, jobs)]
    assert named(points, metrics.RECORDS_RECOVERED) == []
    assert [(p.kind, p.value, p.count, p.tags) for p in named(points, metrics.SYNC_DURATION)] == [
        ("exponential_histogram", 1500.0, 1, customers),
        ("exponential_histogram", 250.0, 1, jobs),
    ]


def test_recovery_counts_recovered_records(sink):
    metrics.emit_recovery(RecoveryResult(CREDENTIAL, attempted=5, recovered=3, failed=2))

    points = sink.collect()

    assert [(p.value, p.tags) for p in named(points, metrics.RECORDS_RECOVERED)] == [
        (3, {"credential": CREDENTIAL, "resource": "all"})
    ]
    assert named(points, metrics.RECORDS_FAILED) == []


class _BrokenBackend(NoStatsLogger):
    """A metrics backend that fails on every call (e.g. a misconfigured custom client)."""

    @classmethod
    def incr(cls, *args: object, **kwargs: object) -> None:
        raise OSError("metrics backend is down")

    gauge = timing = incr


@pytest.fixture
def broken_backend() -> Iterator[None]:
    stats.initialize(factory=_BrokenBackend, export_legacy_names=False)
    yield
    stats.initialize(factory=NoStatsLogger, export_legacy_names=False)


@pytest.mark.usefixtures("broken_backend")
def test_a_failing_backend_never_breaks_the_caller(caplog):
    listener = metrics.MetricsListener(CREDENTIAL)
    breaker = CircuitBreaker("tenant-42", None)
    breaker.add_listener(listener.on_transition)

    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        listener.on_renew()
        listener.on_error(ValueError("bug"))
        breaker.force_open(5)
        metrics.emit_resource_summary(CREDENTIAL, ResourceSummary("jobs", "success", successful=1), 0.1)

    assert breaker.state == "open"
    assert [r.getMessage() for r in caplog.records] == [
        f"could not emit metric {stat}"
        for stat in (
            metrics.TOKEN_RENEWALS,
            metrics.ERRORS,
            metrics.BREAKER_TRANSITIONS,
            metrics.BREAKER_STATE,
            metrics.RECORDS_SYNCED,
            metrics.RECORDS_FAILED,
            metrics.SYNC_DURATION,
        )
    ]
