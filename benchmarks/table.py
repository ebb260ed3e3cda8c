"""What every benchmark reports: one row per measured figure, ours beside a peer's from the same run.

A benchmark module exposes ``measure(options: BenchOptions) -> list[Row]``; ``benchmarks/run.py``
runs them all and prints one table. A row's ``ratio`` is ours / peer. ``ok`` is ``False`` only when
data differs from the truth: timings never fail a run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchOptions:
    """Shared knobs of a benchmark run (``benchmarks/run.py --help``)."""

    redis_url: str = "redis://127.0.0.1:6379/7"
    postgres_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
    repeats: int = 3
    quick: bool = False


@dataclass(frozen=True)
class Row:
    """One figure: ``ours`` measured beside ``peer`` (named ``peer_name``) in ``unit``.

    :param group: the section of the table (``breaker``, ``tokens``, ``sync``, ...).
    :param ok: ``False`` when the data this figure comes from differs from the truth.
    :param note: what was compared, e.g. ``"median of 3, 20k records, 50 ms latency"``.
    """

    group: str
    metric: str
    ours: float
    peer: float
    peer_name: str
    unit: str
    ok: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.peer if self.peer else float("inf")
