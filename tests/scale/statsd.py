"""A StatsD receiver on 127.0.0.1 (UDP) that keeps the provider's metrics, as Airflow's StatsD backend sends them.

With ``[metrics] statsd_influxdb_enabled`` the tags travel in the name, InfluxDB style:
``airflow.servicetitan.breaker.transitions,credential=c1,from_state=closed,to_state=open:1|c``.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

PREFIX = "airflow"
_BUFFER = 8 * 1024 * 1024  # room for bursts while the receiving thread waits for the GIL


@dataclass(frozen=True)
class Metric:
    """One received sample: the name without the prefix, its tags, value and type (``c``, ``g``, ``ms``)."""

    name: str
    tags: Mapping[str, str]
    value: float
    kind: str


def parse(line: str) -> Metric | None:
    """A sample of the StatsD line ``line``, or ``None`` if it is not ``<name>[,tag=v...]:<value>|<type>``."""
    head, sep, rest = line.partition(":")
    if not sep or "|" not in rest:
        return None
    value, kind = rest.split("|")[:2]
    name, *pairs = head.split(",")
    tags = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    try:
        return Metric(name.removeprefix(f"{PREFIX}."), tags, float(value), kind)
    except ValueError:
        return None


class StatsdReceiver:
    """Receives StatsD datagrams on a free UDP port and keeps the samples whose name starts with ``keep``."""

    def __init__(self, keep: str = "servicetitan.") -> None:
        self.keep = keep
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port: int = self._socket.getsockname()[1]
        self._metrics: list[Metric] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="statsd-receiver", daemon=True)

    def env(self) -> dict[str, str]:
        """The ``[metrics]`` settings that send Airflow's StatsD metrics, with tags, here (only the provider's)."""
        return {
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(self.port),
            "AIRFLOW__METRICS__STATSD_PREFIX": PREFIX,
            "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
            "AIRFLOW__METRICS__METRICS_ALLOW_LIST": self.keep.rstrip("."),
        }

    def metrics(self, name: str) -> list[Metric]:
        with self._lock:
            return [metric for metric in self._metrics if metric.name == name]

    def counts(self, name: str, *by: str) -> Counter[tuple[str, ...]]:
        """The counter ``name`` summed by the values of the tags ``by``."""
        totals: Counter[tuple[str, ...]] = Counter()
        for metric in self.metrics(name):
            totals[tuple(metric.tags.get(tag, "") for tag in by)] += int(metric.value)
        return totals

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(65535)
            except TimeoutError:
                continue
            found = [parse(line) for line in data.decode(errors="replace").splitlines()]
            kept = [metric for metric in found if metric is not None and metric.name.startswith(self.keep)]
            if kept:
                with self._lock:
                    self._metrics.extend(kept)

    def __enter__(self) -> StatsdReceiver:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()
