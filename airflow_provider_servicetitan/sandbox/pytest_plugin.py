"""pytest fixtures for testing code against a sandbox.

Enable with ``pytest_plugins = ["airflow_provider_servicetitan.sandbox.pytest_plugin"]`` in the
root ``conftest.py``. Override ``servicetitan_sandbox_config`` to change the settings.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_servicetitan.sandbox.config import SandboxConfig
from airflow_provider_servicetitan.sandbox.server import SandboxServer


@pytest.fixture
def servicetitan_sandbox_config() -> SandboxConfig:
    """Settings of the ``servicetitan_sandbox`` fixture: the defaults."""
    return SandboxConfig()


@pytest.fixture
def servicetitan_sandbox(servicetitan_sandbox_config: SandboxConfig) -> Iterator[SandboxServer]:
    """A started sandbox, stopped after the test."""
    with SandboxServer(servicetitan_sandbox_config) as sandbox:
        yield sandbox
