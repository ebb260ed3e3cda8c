"""Fixtures of the sandbox tests: a running sandbox (reset before each test) and an HTTP client for it.

Everything goes over real HTTP. The shared sandbox runs on a frozen clock, so rate limits, token
expiry and outage windows move only when a test advances the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from airflow_provider_servicetitan.sandbox import SandboxConfig, SandboxServer

from .helpers import Api

SHARED_SETTINGS: dict[str, Any] = {
    "tenants": 2,
    "records": 120,
    "seed": 7,
    "recent_changes_delay": 0,
    "frozen_clock": True,
    "rate_limit": 1000,
    "export_page_size": 25,
    "unlicensed_modules": {1002: ["accounting"]},
}


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(**SHARED_SETTINGS)) as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(shared_sandbox: SandboxServer) -> SandboxServer:
    """The shared sandbox, back at its start state."""
    shared_sandbox.admin.reset()
    return shared_sandbox


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., SandboxServer]]:
    """Start a sandbox with the shared settings changed by keyword; stopped after the test."""
    with ExitStack() as stack:

        def start(**changes: Any) -> SandboxServer:
            config = SandboxConfig(**{**SHARED_SETTINGS, **changes})
            return stack.enter_context(SandboxServer(config))

        yield start


@pytest.fixture
def make_api() -> Iterator[Callable[..., Api]]:
    """Build an :class:`Api` for a sandbox tenant (by credential index), closed after the test."""
    apis: list[Api] = []

    def make(sandbox: SandboxServer, index: int = 0, *, authenticated: bool = True) -> Api:
        api = Api(sandbox, index)
        apis.append(api)
        return api.authenticate() if authenticated else api

    yield make
    for api in apis:
        api.session.close()


@pytest.fixture
def api(sandbox: SandboxServer, make_api: Callable[..., Api]) -> Api:
    """An authenticated client of the first tenant (1001) of the shared sandbox."""
    return make_api(sandbox)


@pytest.fixture
def api2(sandbox: SandboxServer, make_api: Callable[..., Api]) -> Api:
    """An authenticated client of the second tenant (1002) of the shared sandbox."""
    return make_api(sandbox, 1)
