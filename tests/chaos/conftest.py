"""Fixtures of the chaos matrix: private Redis and PostgreSQL servers a test may kill, and the
figures every row prints (also gathered in a "chaos matrix" section at the end of the run).

The Airflow, warehouse and sandbox fixtures are the operator tests' own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from tests.chaos.audit import Audit, Figures
from tests.chaos.servers import PrivatePostgres, PrivateRedis, ServerUnavailable
from tests.operators.conftest import operator_env, warehouse

__all__ = ["chaos_row", "operator_env", "private_postgres", "private_redis", "warehouse"]

_FIGURES = pytest.StashKey[list[Figures]]()
Server = TypeVar("Server", PrivateRedis, PrivatePostgres)


@dataclass
class ChaosRow:
    """One row of the matrix: its name, when it started, and the figures it reported."""

    name: str
    started: float = field(default_factory=time.monotonic)
    figures: list[Figures] = field(default_factory=list)

    def report(self, audit: Audit, *, token_requests: int, retries: int, note: str = "") -> Figures:
        """Print the row's figures (before its assertions, so a failure shows them too)."""
        figures = Figures(self.name, audit, token_requests, retries, time.monotonic() - self.started, note)
        print(figures.line())
        self.figures.append(figures)
        return figures


@pytest.fixture
def chaos_row(request: pytest.FixtureRequest) -> Iterator[ChaosRow]:
    row = ChaosRow(request.node.name)
    yield row
    request.config.stash.setdefault(_FIGURES, []).extend(row.figures)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A started redis-server on a free port with its own directory; killed and removed afterwards."""
    with _running(PrivateRedis, "the Redis chaos row needs a private redis-server") as server:
        yield server


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started PostgreSQL cluster (initdb as the postgres OS user) on a free port; removed afterwards."""
    with _running(PrivatePostgres, "the PostgreSQL chaos row needs a private cluster") as server:
        yield server


@contextmanager
def _running(make: Callable[[], Server], purpose: str) -> Iterator[Server]:
    """Make and start a server, or fail the test saying why (never a silent skip); always clean up."""
    with ExitStack() as cleanup:
        try:
            server = make()
            cleanup.callback(server.close)
            server.start()
        except ServerUnavailable as exc:
            reason = str(exc)
        else:
            yield server
            return
    pytest.fail(f"{purpose}: {reason}", pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash.get(_FIGURES, [])
    if figures:
        terminalreporter.section("chaos matrix")
        for row in figures:
            terminalreporter.write_line(row.line())
