"""``Date`` and ``Retry-After`` come from the sandbox clock, in either form a server may send."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import pytest
import requests

from airflow_provider_servicetitan.errors import RateLimitExceededError, error_from_response
from airflow_provider_servicetitan.sandbox import SandboxAdminError
from airflow_provider_servicetitan.sandbox.timestamps import parse_ms

from .helpers import assert_problem

AHEAD = 600.0  # the sandbox clock 10 minutes ahead of this host's


def _clock_now(sandbox) -> int:
    """The sandbox clock, in whole seconds (the shared sandbox's clock is frozen)."""
    return parse_ms(sandbox.admin.config()["clock"]["now"]) // 1000


def _date(response: requests.Response, header: str = "Date") -> int:
    return int(parsedate_to_datetime(response.headers[header]).timestamp())


def test_every_answer_has_one_date_from_the_sandbox_clock(sandbox, api):
    sandbox.admin.advance_clock(AHEAD)
    now = _clock_now(sandbox)
    sandbox.admin.set_faults(burst_429=1)

    answers = {
        "429": api.get(api.list_path("customers")),
        "api": api.get(api.list_path("customers")),
        "token": api.request_token(),
        "admin": requests.get(sandbox.base_url + "/_sandbox/stats", timeout=10),
    }

    for name, response in answers.items():
        assert response.raw.headers.getlist("Date") == [response.headers["Date"]], name  # uvicorn adds none
        assert _date(response) == now, name


def test_retry_after_is_seconds_by_default(sandbox, api):
    sandbox.admin.set_faults(burst_429=1, burst_429_retry_after=30)

    assert api.get(api.list_path("customers")).headers["Retry-After"] == "30"


def test_retry_after_as_an_http_date_is_the_sandbox_date_plus_the_wait(sandbox, api):
    sandbox.admin.advance_clock(AHEAD)
    sandbox.admin.set_faults(burst_429=1, burst_429_retry_after=30, retry_after_format="http-date")

    response = api.get(api.list_path("customers"))

    assert_problem(response, 429)
    assert _date(response, "Retry-After") - _date(response) == 30
    assert _date(response) == _clock_now(sandbox)
    error = error_from_response(response)
    assert isinstance(error, RateLimitExceededError)
    assert error.retry_after == 30.0  # measured from the sandbox's Date, not from this host's clock


def test_rate_limit_answers_use_the_date_form_too(start_sandbox, make_api):
    sandbox = start_sandbox(rate_limit=1, token_rate_limit=1)
    sandbox.admin.set_faults(retry_after_format="http-date")
    api = make_api(sandbox)
    api.get(api.list_path("customers"))

    throttled = api.get(api.list_path("customers"))
    token_throttled = api.request_token()

    for response in (throttled, token_throttled):
        assert_problem(response, 429)
        assert _date(response, "Retry-After") - _date(response) >= 1


def test_an_unknown_retry_after_format_is_refused(sandbox):
    with pytest.raises(SandboxAdminError, match="retry_after_format"):
        sandbox.admin.set_faults(retry_after_format="minutes")
