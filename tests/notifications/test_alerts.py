"""The alert model: what a person reads, in the log, in Slack and in an email."""

from __future__ import annotations

import json

import pytest

from airflow_provider_servicetitan.notifications.alerts import Alert, AlertKind, make_incident_key

LOG_URL = "http://airflow.example/dags/d/runs/r/tasks/sync/mapped/0?try_number=4"


def make_alert(**changes: object) -> Alert:
    fields: dict[str, object] = {
        "kind": "retries_exhausted",
        "credential": "servicetitan_acme",
        "tenant_id": "1234",
        "error_class": "ServiceTitanServerError",
        "trace_id": "trace-42",
        "summary": "Gave up after 5 attempts",
        "system_action": "Kept the checkpoint",
        "human_action": "Check ServiceTitan's status",
        "log_url": LOG_URL,
        "details": {"attempts": 5},
        **changes,
    }
    return Alert(**fields)  # type: ignore[arg-type]


def test_text_tells_what_happened_what_was_done_and_what_to_do() -> None:
    text = make_alert().as_text()

    assert text.splitlines() == [
        "[ServiceTitan] Retries exhausted: servicetitan_acme (tenant 1234)",
        "What happened: Gave up after 5 attempts",
        "Error: ServiceTitanServerError, traceId trace-42",
        "What the system did: Kept the checkpoint",
        "What to do: Check ServiceTitan's status",
        f"Task log: {LOG_URL}",
        "Details: attempts=5",
    ]


def test_slack_payload_has_a_complete_text_and_escaped_blocks() -> None:
    alert = make_alert(summary="ServiceTitan answered 500 for /a<b>&c", breaker_state="open")

    payload = alert.as_slack_payload()

    assert json.loads(json.dumps(payload)) == payload
    text = payload["text"]
    assert text.startswith("*[ServiceTitan] Retries exhausted: servicetitan_acme (tenant 1234)*\n")
    assert "*What happened:* ServiceTitan answered 500 for /a&lt;b&gt;&amp;c" in text
    assert "*Circuit breaker:* open" in text
    assert f"*Task log:* <{LOG_URL}|open the task log>" in text
    header, section = payload["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "ServiceTitan: Retries exhausted: servicetitan_acme"},
    }
    assert section["text"]["type"] == "mrkdwn"
    assert section["text"]["text"] == text.split("\n", 1)[1]


def test_slack_blocks_stay_within_slack_limits() -> None:
    payload = make_alert(credential="c" * 200, summary="x" * 5000).as_slack_payload()

    header, section = payload["blocks"]
    assert len(header["text"]["text"]) == 150
    assert len(section["text"]["text"]) == 3000
    assert "x" * 5000 in payload["text"]


def test_email_has_a_subject_and_escaped_html() -> None:
    subject, body = make_alert(summary="a <b> & c").as_email()

    assert subject == "[ServiceTitan] Retries exhausted: servicetitan_acme"
    assert "What happened: a &lt;b&gt; &amp; c" in body
    assert LOG_URL.replace("&", "&amp;") in body


def test_incident_key_defaults_to_credential_kind_and_error_class() -> None:
    alert = make_alert()

    assert alert.incident_key == "servicetitan_acme|retries_exhausted|ServiceTitanServerError"
    assert alert.incident_key == make_incident_key("servicetitan_acme", AlertKind.RETRIES_EXHAUSTED, alert.error_class)
    assert make_alert(incident_key="custom").incident_key == "custom"


def test_kind_is_validated_and_the_alert_is_frozen() -> None:
    assert make_alert().kind is AlertKind.RETRIES_EXHAUSTED
    with pytest.raises(ValueError, match="not_a_kind"):
        make_alert(kind="not_a_kind")
    with pytest.raises(AttributeError):
        make_alert().summary = "changed"  # type: ignore[misc]


def test_with_details_adds_facts_without_touching_the_original() -> None:
    alert = make_alert()

    richer = alert.with_details(task_id="sync", map_index=None)

    assert richer.details == {"attempts": 5, "task_id": "sync"}
    assert alert.details == {"attempts": 5}


def test_as_dict_is_json_ready() -> None:
    data = make_alert().as_dict()

    assert json.loads(json.dumps(data)) == data
    assert data["kind"] == "retries_exhausted"
    assert data["resolves"] is None


def resolved(**changes: object) -> Alert:
    return make_alert(
        kind="resolved",
        error_class=None,
        trace_id=None,
        details={},
        summary="servicetitan_acme works again.",
        **changes,
    )


def test_an_all_clear_as_sent_names_every_incident_it_closed() -> None:
    sent = resolved(resolves=("retries_exhausted", "circuit_opened")).closing(["circuit_opened", "retries_exhausted"])

    assert sent.summary == (
        "servicetitan_acme works again. Closed its open incidents: Circuit breaker opened, Retries exhausted."
    )
    assert sent.resolves == (AlertKind.CIRCUIT_OPENED, AlertKind.RETRIES_EXHAUSTED)
    assert sent.details == {"closed": "circuit_opened, retries_exhausted"}
    assert sent.as_dict()["resolves"] == ["circuit_opened", "retries_exhausted"]


def test_an_all_clear_names_a_kind_it_does_not_know_as_it_is() -> None:
    sent = resolved().closing(["a_future_kind"])

    assert sent.summary.endswith("Closed its open incidents: a_future_kind.")
    assert sent.resolves is None


@pytest.mark.parametrize("resolves", [(), ("resolved",), ("no_such_kind",)])
def test_an_all_clear_resolves_kinds_of_incidents(resolves: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - AlertKind's own message for an unknown kind
        resolved(resolves=resolves)
