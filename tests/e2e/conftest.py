"""Fixtures of the e2e tests: one set of real Airflow services for the whole session.

``airflow_services`` starts them on first use and stops everything at the end of the session, also
when tests fail. Startup phase timings go to the terminal as they happen (capture bypassed) and again
in the summary at the end of the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.session import E2ESession, e2e_session

__all__ = ["airflow_services"]

_TIMINGS = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def airflow_services(request: pytest.FixtureRequest) -> Iterator[E2ESession]:
    """Real Airflow 3.3 services, the sandbox, the warehouse and the connections; see :class:`E2ESession`."""
    with e2e_session(_reporter(request.config)) as session:
        yield session


def _reporter(config: pytest.Config) -> Callable[[str], None]:
    """Write a line to the terminal now, whatever the capture mode, and keep it for the summary."""
    lines = config.stash.setdefault(_TIMINGS, [])
    capture = config.pluginmanager.getplugin("capturemanager")
    terminal = config.pluginmanager.getplugin("terminalreporter")

    def report(line: str) -> None:
        lines.append(line)
        if terminal is None:
            return
        if capture is None:
            terminal.write_line(line)
            return
        with capture.global_and_fixture_disabled():
            terminal.write_line(line)

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(_TIMINGS, [])
    if lines:
        terminalreporter.section("e2e startup")
        for line in lines:
            terminalreporter.write_line(line)
