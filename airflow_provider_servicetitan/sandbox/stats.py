"""Counters of what the sandbox served, for ``GET /_sandbox/stats``."""

from __future__ import annotations

from collections import Counter
from typing import Any

from airflow_provider_servicetitan.sandbox.faults import FaultKind


class Stats:
    """Requests by endpoint, status and tenant; tokens issued; faults injected by kind."""

    def __init__(self) -> None:
        self._by_endpoint: Counter[str] = Counter()
        self._by_resource: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._by_tenant: Counter[int] = Counter()
        self._faults: Counter[FaultKind] = Counter()
        self._tokens_issued = 0

    def request(self, endpoint: str, resource: str | None, tenant_id: int | None) -> None:
        """Count a request to ``endpoint`` (``token``, ``list``, ``export``, ``other``)."""
        self._by_endpoint[endpoint] += 1
        if resource is not None:
            self._by_resource[f"{endpoint}/{resource}"] += 1
        if tenant_id is not None:
            self._by_tenant[tenant_id] += 1

    def response(self, status: int) -> None:
        self._by_status[status] += 1

    def fault(self, kind: FaultKind) -> None:
        self._faults[kind] += 1

    def token_issued(self) -> None:
        self._tokens_issued += 1

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready counters."""
        return {
            "requests_total": self._by_endpoint.total(),
            "requests_by_endpoint": dict(sorted(self._by_endpoint.items())),
            "requests_by_resource": dict(sorted(self._by_resource.items())),
            "requests_by_status": {str(status): n for status, n in sorted(self._by_status.items())},
            "requests_by_tenant": {str(tenant): n for tenant, n in sorted(self._by_tenant.items())},
            "token_requests_total": self._by_endpoint["token"],
            "token_requests_issued": self._tokens_issued,
            "responses_429": self._by_status[429],
            "faults_injected": {str(kind): n for kind, n in sorted(self._faults.items())},
        }
