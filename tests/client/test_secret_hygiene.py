"""No client secret, app key or token in any error: message, cause/context chain or formatted traceback."""

from __future__ import annotations

import dataclasses
import json
import threading
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_provider_servicetitan.errors import (
    InvalidCredentialsError,
    RetryExhaustedError,
    ServiceTitanConnectionError,
    ServiceTitanError,
    ServiceTitanTimeoutError,
    TokenRefreshError,
)
from airflow_provider_servicetitan.resilience.retry import RetryPolicy
from tests.helpers import credentials_for

ONE_ATTEMPT = RetryPolicy(max_attempts=1)


def escaped_forms(secret: str) -> set[str]:
    return {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], secret[:12]}


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def assert_no_secret(error: BaseException, secrets: list[str]) -> None:
    texts = ["".join(traceback.format_exception(error))]
    for link in chain(error):
        texts += [str(link), repr(link), repr(link.args), repr(vars(link))]
    everything = "\n".join(texts)
    for secret in secrets:
        for form in escaped_forms(secret):
            assert form not in everything, f"a secret ({len(secret)} chars) appears in the error chain"


def failure_of(call: Callable[[], object]) -> ServiceTitanError:
    with pytest.raises(ServiceTitanError) as caught:
        call()
    return caught.value


def root(error: BaseException) -> BaseException:
    """The error behind a RetryExhaustedError (retryable errors come wrapped in one)."""
    return error.last_error if isinstance(error, RetryExhaustedError) else error


@pytest.fixture
def token_server() -> Iterator[Callable[[int, dict], str]]:
    """A token endpoint of our own over real HTTP that answers what a test tells it to."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, body: dict) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/connect/token"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_rejected_secret(sandbox, make_client):
    creds = dataclasses.replace(credentials_for(sandbox), client_secret="cs1.a-wrong-secret-value")
    client = make_client(creds, retry_policy=ONE_ATTEMPT)

    error = failure_of(lambda: client.request("GET", f"/crm/v2/tenant/{creds.tenant_id}/customers"))

    assert isinstance(error, InvalidCredentialsError)
    assert_no_secret(error, [creds.client_secret, creds.app_key])


def test_token_endpoint_that_echoes_the_secret(sandbox, make_client, token_server):
    creds = credentials_for(sandbox)
    echo = {"title": "Bad Request", "detail": f"client_secret '{creds.client_secret}' is not valid", "status": 400}
    creds = dataclasses.replace(creds, auth_url=token_server(400, echo))
    client = make_client(creds, retry_policy=ONE_ATTEMPT)

    error = failure_of(lambda: client.request("GET", f"/crm/v2/tenant/{creds.tenant_id}/customers"))

    assert isinstance(error, InvalidCredentialsError)
    assert "is not valid" in str(error)
    assert_no_secret(error, [creds.client_secret, creds.app_key])


def test_refused_twice_with_a_wrong_app_key(sandbox, make_client):
    creds = dataclasses.replace(credentials_for(sandbox), app_key="ak1.a-wrong-app-key-value")
    tokens: list[str] = []
    client = make_client(creds, retry_policy=ONE_ATTEMPT, on_token=tokens.append)

    error = failure_of(lambda: client.request("GET", f"/crm/v2/tenant/{creds.tenant_id}/customers"))

    assert isinstance(error, InvalidCredentialsError)
    assert len(tokens) == 2  # the 401 renewed the token once, then gave up
    assert_no_secret(error, [creds.client_secret, creds.app_key, *tokens])


@pytest.mark.parametrize("token", ["tok.abc\r\nX-Injected: yes", "tok.with space", "tok.\u00e9t\u00e9"])
def test_token_that_cannot_be_sent_in_a_header(sandbox, make_client, token_server, token):
    creds = dataclasses.replace(
        credentials_for(sandbox), auth_url=token_server(200, {"access_token": token, "expires_in": 900})
    )
    client = make_client(creds, retry_policy=ONE_ATTEMPT)

    error = failure_of(lambda: client.request("GET", f"/crm/v2/tenant/{creds.tenant_id}/customers"))

    assert isinstance(root(error), TokenRefreshError)
    assert_no_secret(error, [creds.client_secret, creds.app_key, token])


def test_unreachable_api(sandbox, make_client):
    creds = dataclasses.replace(credentials_for(sandbox), api_url="http://127.0.0.1:1")
    tokens: list[str] = []
    client = make_client(creds, retry_policy=ONE_ATTEMPT, on_token=tokens.append)

    error = failure_of(lambda: client.request("GET", f"/crm/v2/tenant/{creds.tenant_id}/customers"))

    assert isinstance(root(error), ServiceTitanConnectionError)
    assert "Connection refused" in str(root(error))  # what the transport said is kept, redacted
    assert root(error).__cause__ is None
    assert root(error).__context__ is None
    assert_no_secret(error, [creds.client_secret, creds.app_key, *tokens])


def test_unreachable_token_endpoint(sandbox, make_client):
    creds = dataclasses.replace(credentials_for(sandbox), auth_url="http://127.0.0.1:1/connect/token")
    client = make_client(creds, retry_policy=ONE_ATTEMPT)

    error = failure_of(lambda: client.request("GET", f"/crm/v2/tenant/{creds.tenant_id}/customers"))

    assert isinstance(root(error), TokenRefreshError)
    assert root(error).__context__ is None
    assert_no_secret(error, [creds.client_secret, creds.app_key])


def test_timeout(start_sandbox, make_client):
    sandbox = start_sandbox()
    creds = credentials_for(sandbox)
    tokens: list[str] = []
    client = make_client(creds, retry_policy=ONE_ATTEMPT, on_token=tokens.append)
    client.token_manager.get_token()
    sandbox.admin.set_faults(timeout_rate=1.0, timeout_hold=60.0)  # released when the sandbox stops
    client.timeout = (2.0, 0.2)

    error = failure_of(lambda: client.request("GET", f"/crm/v2/tenant/{creds.tenant_id}/customers"))

    assert isinstance(root(error), ServiceTitanTimeoutError)
    assert_no_secret(error, [creds.client_secret, creds.app_key, *tokens])
