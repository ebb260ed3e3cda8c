"""A local fake of the ServiceTitan API with reproducible fault injection.

It serves the token endpoint, the tenant list endpoints and the export feeds of every resource in
the catalogue over real HTTP, from data generated deterministically from a seed, and can be told
to misbehave (errors, latency, timeouts, resets, outages, 429 bursts, malformed records, broken
or truncated pages, requests held after N pages). ``/_sandbox/`` endpoints steer it and tell the
truth about its data.
"""

from airflow_provider_servicetitan.sandbox.admin import SandboxAdmin, SandboxAdminError
from airflow_provider_servicetitan.sandbox.config import SandboxConfig
from airflow_provider_servicetitan.sandbox.credentials import SandboxCredential
from airflow_provider_servicetitan.sandbox.knobs import FAULT_KNOBS, PROFILES, FaultConfig
from airflow_provider_servicetitan.sandbox.server import SandboxServer

__all__ = [
    "FAULT_KNOBS",
    "PROFILES",
    "FaultConfig",
    "SandboxAdmin",
    "SandboxAdminError",
    "SandboxConfig",
    "SandboxCredential",
    "SandboxServer",
]
