"""HTTP helpers of the sandbox tests: a bare ServiceTitan client and an RFC 7807 check."""

from __future__ import annotations

from typing import Any

import requests

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.sandbox import SandboxServer


class Api:
    """A bare-bones ServiceTitan client for one tenant of a sandbox (no retries: tests see everything)."""

    def __init__(self, sandbox: SandboxServer, index: int = 0) -> None:
        self.sandbox = sandbox
        self.credential = sandbox.credentials[index]
        self.tenant_id = self.credential.tenant_id
        self.session = requests.Session()
        self.token: str | None = None

    def request_token(self, **form: str) -> requests.Response:
        fields = {
            "grant_type": "client_credentials",
            "client_id": self.credential.client_id,
            "client_secret": self.credential.client_secret,
            **form,
        }
        return self.session.post(self.sandbox.token_url, data=fields, timeout=10)

    def authenticate(self) -> Api:
        response = self.request_token()
        assert response.status_code == 200, response.text
        self.token = response.json()["access_token"]
        return self

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "ST-App-Key": self.credential.app_key}

    def list_path(self, resource: str) -> str:
        return get_resource(resource).list_path(self.tenant_id)

    def export_path(self, resource: str) -> str:
        return get_resource(resource).export_path(self.tenant_id)

    def get(
        self, path: str, *, headers: dict[str, str] | None = None, timeout: float = 10, **params: Any
    ) -> requests.Response:
        return self.session.get(
            self.sandbox.base_url + path,
            params=params,
            headers=self.headers() if headers is None else headers,
            timeout=timeout,
        )

    def ok(self, path: str, **params: Any) -> dict[str, Any]:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def list_all(self, resource: str, **params: Any) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.ok(self.list_path(resource), page=page, **params)
            records += body["data"]
            if not body["hasMore"]:
                return records
            page += 1

    def export_all(self, resource: str, **params: Any) -> tuple[list[dict[str, Any]], str]:
        """Every record of the export feed from ``params`` on, and the bookmark to go on from."""
        records: list[dict[str, Any]] = []
        while True:
            body = self.ok(self.export_path(resource), **params)
            records += body["data"]
            params["from"] = body["continueFrom"]
            if not body["hasMore"]:
                return records, body["continueFrom"]


def assert_problem(response: requests.Response, status: int) -> dict[str, Any]:
    """``response`` is an RFC 7807 answer with ``status`` and a traceId; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"].startswith("https://")
    assert body["traceId"]
    return body
