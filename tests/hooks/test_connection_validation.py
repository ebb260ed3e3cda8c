"""Every connection field is validated offline, by name, before anything else touches the value.

Each bad input either validates or raises ``CredentialValidationError`` naming its field, fast,
without a single request to the sandbox, and without echoing a secret or a long value.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_servicetitan.client.credentials import MAX_FIELD_CHARS, MAX_TENANT_ID, ServiceTitanCredentials
from airflow_provider_servicetitan.errors import CredentialValidationError
from airflow_provider_servicetitan.hooks.servicetitan import ServiceTitanHook
from tests.helpers import set_connection

SECRET = "cs1.the-client-secret-value"
APP_KEY = "ak1.the-app-key-value"
# Airflow itself masks a connection's password and extra when it is fetched (36 s for a 10 MB
# password on this machine, before any provider code runs): through Airflow the tests use values
# just over the cap; the 10 MB values go to the provider's own validation directly.
HUGE = "7" * 10_000_000
OVER_CAP = "7" * (MAX_FIELD_CHARS + 1)
CONN_ID = "st_validation"
# An error message says what is wrong in a line, whatever the value.
MAX_MESSAGE_CHARS = 400


def fields_for(sandbox) -> dict[str, Any]:
    cred = sandbox.credentials[0]
    return {
        "client_id": cred.client_id,
        "client_secret": SECRET,
        "app_key": APP_KEY,
        "tenant_id": str(cred.tenant_id),
        "environment": "integration",
        "auth_url": sandbox.token_url,
        "api_url": sandbox.base_url,
    }


def define(monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], extra: Any = None) -> None:
    """The connection as Airflow stores it: login/password, the other fields in the extra."""
    conn_extra = {name: fields[name] for name in ("app_key", "tenant_id", "environment", "auth_url", "api_url")}
    set_connection(
        monkeypatch,
        CONN_ID,
        conn_type="servicetitan",
        login=fields["client_id"],
        password=fields["client_secret"],
        extra=conn_extra if extra is None else extra,
    )


def build(fields: dict[str, Any]) -> tuple[str | None, str]:
    """``(field named by the error or None, message)`` for a connection with ``fields``."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        define(monkeypatch, fields)
        try:
            ServiceTitanHook(CONN_ID, None).get_conn()
        except CredentialValidationError as invalid:
            return invalid.field, str(invalid)
    return None, ""


def validate(fields: dict[str, Any]) -> tuple[str | None, str]:
    """Like :func:`build`, with the provider's own validation alone (no Airflow connection)."""
    try:
        ServiceTitanCredentials.from_fields(**fields, conn_id=CONN_ID)
    except CredentialValidationError as invalid:
        return invalid.field, str(invalid)
    return None, ""


def assert_safe(message: str, *secrets: str) -> None:
    assert len(message) <= MAX_MESSAGE_CHARS, message[:MAX_MESSAGE_CHARS]
    for secret in (SECRET, APP_KEY, *secrets):
        assert secret not in message


def requests_made(sandbox) -> int:
    return sandbox.admin.stats()["requests_total"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("tenant_id", "\u0661\u0662\u0663", id="tenant-arabic-indic-digits"),
        pytest.param("tenant_id", "\uff15\uff16", id="tenant-fullwidth-digits"),
        pytest.param("tenant_id", "\u00b2", id="tenant-superscript-two"),
        pytest.param("tenant_id", "12 34", id="tenant-inner-space"),
        pytest.param("tenant_id", "-5", id="tenant-negative"),
        pytest.param("tenant_id", "0", id="tenant-zero"),
        pytest.param("tenant_id", str(MAX_TENANT_ID + 1), id="tenant-over-int64"),
        pytest.param("tenant_id", 1.5, id="tenant-float"),
        pytest.param("tenant_id", [5], id="tenant-list"),
        pytest.param("tenant_id", True, id="tenant-bool"),
        pytest.param("tenant_id", OVER_CAP, id="tenant-over-cap"),
        pytest.param("app_key", "ak1.abc\r\nX-Injected: 1", id="app-key-crlf"),
        pytest.param("app_key", "ak1.abc\x00def", id="app-key-nul"),
        pytest.param("app_key", "ak1.\u20acuro", id="app-key-non-latin1"),
        pytest.param("app_key", "ak1 abc", id="app-key-space"),
        pytest.param("app_key", OVER_CAP, id="app-key-over-cap"),
        pytest.param("app_key", {"a": 1}, id="app-key-object"),
        pytest.param("client_secret", "cs1.abc\nline", id="secret-newline"),
        pytest.param("client_secret", OVER_CAP, id="secret-over-cap"),
        pytest.param("client_id", "cid.\u00e9", id="client-id-non-ascii"),
        pytest.param("client_id", "", id="client-id-empty"),
        pytest.param("environment", "staging", id="environment-unknown"),
        pytest.param("environment", 3, id="environment-number"),
        pytest.param("auth_url", "http://", id="auth-url-no-host"),
        pytest.param("auth_url", "http:///connect/token", id="auth-url-empty-host"),
        pytest.param("auth_url", "ftp://host/token", id="auth-url-scheme"),
        pytest.param("api_url", "https://host:99999", id="api-url-bad-port"),
        pytest.param("api_url", "https://user:pw@host", id="api-url-userinfo"),
        pytest.param("api_url", "https://ho st", id="api-url-space"),
        pytest.param("api_url", "https://h\u00f6st", id="api-url-non-ascii"),
    ],
)
def test_bad_field_is_refused_by_name_without_a_request(monkeypatch, sandbox, field, value):
    fields = {**fields_for(sandbox), field: value}

    named, message = build(fields)

    assert named == field, message
    assert_safe(message)
    if isinstance(value, str) and field in ("client_secret", "app_key"):
        assert value[:8] not in message.replace(field, "")
    assert requests_made(sandbox) == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param("[1, 2]", "a JSON object", id="list"),
        pytest.param("42", "a JSON object", id="number"),
        pytest.param("{not json", "not valid JSON", id="not-json"),
        pytest.param({"retry": {"max_attempts": [3]}}, "extra.retry.max_attempts", id="retry-list"),
        pytest.param({"retry": {"preset": ["a"]}}, "extra.retry.preset", id="preset-list"),
        pytest.param({"breaker": {"open_seconds": "9" * 100_000}}, "extra.breaker", id="breaker-huge"),
        pytest.param({"breaker": {"open_seconds": 1e400}}, "extra.breaker", id="breaker-infinite"),
    ],
)
def test_extra_must_be_a_json_object_of_known_settings(monkeypatch, sandbox, extra, expected):
    """``extra`` is the raw text Airflow stores, or settings added to otherwise valid fields."""
    fields = fields_for(sandbox)
    if isinstance(extra, dict):
        valid = {name: fields[name] for name in ("app_key", "tenant_id", "environment", "auth_url", "api_url")}
        extra = json.dumps({**valid, **extra})
    set_connection(
        monkeypatch, CONN_ID, conn_type="servicetitan", login=fields["client_id"], password=SECRET, extra=extra
    )

    with pytest.raises(CredentialValidationError) as caught:
        ServiceTitanHook(CONN_ID, None).get_conn()

    assert caught.value.field.startswith("extra")
    assert expected in str(caught.value)
    assert_safe(str(caught.value))
    assert requests_made(sandbox) == 0


@pytest.mark.parametrize("field", ["client_id", "client_secret", "app_key", "tenant_id", "environment", "api_url"])
def test_a_10mb_value_is_refused_by_its_length_alone(sandbox, field):
    fields = {**fields_for(sandbox), field: HUGE}

    with pytest.raises(CredentialValidationError) as caught:
        ServiceTitanCredentials.from_fields(**fields, conn_id=CONN_ID)

    assert caught.value.field == field
    assert f"at most {MAX_FIELD_CHARS} characters" in str(caught.value)
    assert_safe(str(caught.value))


def test_valid_fields_with_surrounding_whitespace_are_accepted(monkeypatch, sandbox):
    fields = {name: f" {value}\n" for name, value in fields_for(sandbox).items()}
    fields["client_secret"] = sandbox.credentials[0].client_secret
    fields["app_key"] = sandbox.credentials[0].app_key

    named, message = build(fields)

    assert named is None, message


def test_the_connection_is_fetched_once_per_hook(monkeypatch, sandbox):
    define(monkeypatch, fields_for(sandbox))
    hook = ServiceTitanHook(CONN_ID, None)
    fetched: list[str] = []
    original = hook.get_connection

    def counting(conn_id: str):
        fetched.append(conn_id)
        return original(conn_id)

    monkeypatch.setattr(hook, "get_connection", counting)
    hook.get_credentials()
    hook.get_retry_policy()
    hook.get_breaker_config()
    hook.get_conn()

    assert fetched == [CONN_ID]


# Values of every kind a connection field can hold once Airflow has parsed the connection JSON.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="ascii"), max_size=40),
    st.from_regex(r"[0-9]{1,25}", fullmatch=True),
    st.from_regex(r"https?://[a-z0-9.:/@ -]{0,30}", fullmatch=True),
    st.sampled_from([OVER_CAP, "a\r\nb", "\x00", "\u0663", "\u2028"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
TEXT_VALUE = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="ascii"), max_size=40),
    st.sampled_from([OVER_CAP, "a\r\nb", "\x00", "\u0663", "\u2028"]),
)
# Login and password are text columns of Airflow's connection; the other fields live in the JSON extra.
FIELD_VALUES = {
    "client_id": TEXT_VALUE,
    "client_secret": TEXT_VALUE,
    **{name: ANY_VALUE for name in ("app_key", "tenant_id", "environment", "auth_url", "api_url")},
}


@st.composite
def field_and_value(draw: st.DrawFn) -> tuple[str, Any]:
    field = draw(st.sampled_from(sorted(FIELD_VALUES)))
    return field, draw(FIELD_VALUES[field])


@settings(
    max_examples=50,  # each example goes through Airflow's connection fetch; the core test below runs 300
    deadline=None,  # Airflow's own fetch and masking of the connection dominate; see the next test
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(change=field_and_value())
def test_any_value_of_any_field_validates_or_is_named(sandbox, change):
    field, value = change
    fields = {**fields_for(sandbox), field: value}

    named, message = build(fields)

    assert named in (None, field), message
    assert_safe(message)
    assert requests_made(sandbox) == 0


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=field_and_value(), huge=st.booleans())
def test_validation_alone_is_fast_whatever_the_value(sandbox, change, huge):
    """The provider's own validation: 10 MB values included, each verdict well within a second."""
    field, value = change
    fields = {**fields_for(sandbox), field: HUGE if huge else value}

    named, message = validate(fields)

    assert named in (None, field), message
    assert_safe(message)
