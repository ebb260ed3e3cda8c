"""validate_record: each rule, and what the error carries for the dead letter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_servicetitan.catalog import RESOURCES, get_resource
from airflow_provider_servicetitan.errors import RecordValidationError
from airflow_provider_servicetitan.storage.records import MAX_RECORD_ID, ValidRecord
from airflow_provider_servicetitan.sync.records import parse_rfc3339, validate_record

CUSTOMERS = get_resource("customers")
GOOD: dict[str, Any] = {"id": 42, "modifiedOn": "2024-03-01T12:00:00.123Z", "name": "Ada"}


def rejected(raw: object) -> RecordValidationError:
    with pytest.raises(RecordValidationError) as caught:
        validate_record(CUSTOMERS, raw)
    assert caught.value.resource == "customers"
    return caught.value


def test_valid_record_is_typed_and_keeps_the_whole_payload() -> None:
    result = validate_record(CUSTOMERS, dict(GOOD))
    assert result == ValidRecord(
        id=42,
        modified_on=datetime(2024, 3, 1, 12, 0, 0, 123000, tzinfo=UTC),
        active=True,
        deleted=False,
        payload=GOOD,
    )


def test_payload_is_a_copy_of_the_raw_record() -> None:
    raw = dict(GOOD)
    result = validate_record(CUSTOMERS, raw)
    raw["name"] = "changed"
    assert result.payload["name"] == "Ada"


@pytest.mark.parametrize("raw", [[GOOD], "a string", 42, None, True])
def test_not_a_json_object(raw: object) -> None:
    error = rejected(raw)
    assert "expected a JSON object" in str(error)
    assert error.record_id is None


@pytest.mark.parametrize("raw", [{"modifiedOn": GOOD["modifiedOn"]}, {"id": None, "modifiedOn": GOOD["modifiedOn"]}])
def test_missing_id(raw: dict[str, Any]) -> None:
    error = rejected(raw)
    assert "has no 'id'" in str(error)
    assert error.record_id is None


@pytest.mark.parametrize(
    ("bad_id", "expected"),
    [
        ("12", "must be an integer, got text '12'"),
        ("ST-12", "must be an integer, got text 'ST-12'"),
        (True, "must be an integer, got a boolean True"),
        (False, "must be an integer, got a boolean False"),
        (12.0, "must be an integer, got a number 12.0"),
        ([12], "must be an integer, got a list [12]"),
        (0, "must be between 1 and"),
        (-5, "must be between 1 and"),
        (MAX_RECORD_ID + 1, "must be between 1 and"),
    ],
)
def test_id_must_be_a_positive_integer_and_the_error_names_it(bad_id: object, expected: str) -> None:
    error = rejected({**GOOD, "id": bad_id})
    assert expected in str(error)
    assert error.record_id == bad_id
    assert type(error.record_id) is type(bad_id)


def test_largest_storable_id_is_accepted() -> None:
    assert validate_record(CUSTOMERS, {**GOOD, "id": MAX_RECORD_ID}).id == MAX_RECORD_ID


@pytest.mark.parametrize("raw", [{"id": 42}, {"id": 42, "modifiedOn": None}])
def test_missing_modified_on(raw: dict[str, Any]) -> None:
    error = rejected(raw)
    assert "has no 'modifiedOn'" in str(error)
    assert error.record_id == 42


@pytest.mark.parametrize(
    "text",
    [
        "not-a-date",
        "2024-03-01",
        "2024-03-01T12:00:00",  # no zone: ambiguous, not RFC 3339
        "2024-03-01T12:00:00.123",
        "2024-03-01T12:00Z",
        "2024-03-01T12:00:00.Z",
        "2024-13-01T12:00:00Z",
        "2024-02-30T12:00:00Z",
        "2024-03-01T24:00:00Z",
        "2024-03-01T12:00:60Z",
        "2024-03-01T12:00:00+24:00",
        "2024-03-01T12:00:00+05:60",
        "2024-03-01T12:00:00+0500",
        "0001-01-01T00:00:00+01:00",  # before the first representable moment once in UTC
        " 2024-03-01T12:00:00Z",
        "",
    ],
)
def test_unparseable_modified_on(text: str) -> None:
    error = rejected({**GOOD, "modifiedOn": text})
    assert "'modifiedOn'" in str(error)
    assert "unreadable" in str(error)
    assert error.record_id == 42


@pytest.mark.parametrize("value", [1709294400, 1709294400.5, ["2024-03-01T12:00:00Z"]])
def test_modified_on_that_is_not_text(value: object) -> None:
    assert "must be a date-time string" in str(rejected({**GOOD, "modifiedOn": value}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T12:00:00Z", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01t12:00:00z", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01 12:00:00Z", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01T12:00:00.5Z", datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2024-03-01T12:00:00.123456Z", datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        # .NET sends 7 fractional digits (100 ns ticks): truncated to microseconds, never rounded up.
        ("2024-03-01T12:00:00.1234567Z", datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2024-03-01T12:00:00.9999999Z", datetime(2024, 3, 1, 12, 0, 0, 999999, tzinfo=UTC)),
        ("2024-03-01T12:00:00.1234567+02:00", datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2024-03-01T12:00:00-05:30", datetime(2024, 3, 1, 17, 30, tzinfo=UTC)),
        ("2024-03-01T00:30:00+01:00", datetime(2024, 2, 29, 23, 30, tzinfo=UTC)),
        ("2024-03-01T12:00:00-00:00", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ],
)
def test_modified_on_formats(text: str, expected: datetime) -> None:
    modified_on = validate_record(CUSTOMERS, {**GOOD, "modifiedOn": text}).modified_on
    assert modified_on == expected
    assert modified_on.tzinfo is UTC


@given(
    moment=st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]),
    ),
    extra_digits=st.integers(min_value=0, max_value=3),
)
def test_parse_rfc3339_round_trips_isoformat(moment: datetime, extra_digits: int) -> None:
    text = moment.isoformat(timespec="microseconds")
    text = text[:26] + "7" * extra_digits + text[26:]  # digits past microseconds are dropped
    assert parse_rfc3339(text) == moment
    assert parse_rfc3339(text).utcoffset() == timedelta(0)


@pytest.mark.parametrize(("raw_active", "expected"), [(True, True), (False, False)])
def test_active_flag(raw_active: bool, expected: bool) -> None:
    assert validate_record(CUSTOMERS, {**GOOD, "active": raw_active}).active is expected


def test_missing_active_means_active() -> None:
    assert validate_record(CUSTOMERS, GOOD).active is True


@pytest.mark.parametrize("value", ["true", 1, 0, None, "False"])
def test_active_that_is_not_a_boolean(value: object) -> None:
    error = rejected({**GOOD, "active": value})
    assert "'active' must be true or false" in str(error)
    assert error.record_id == 42


def test_deleted_flag() -> None:
    assert validate_record(CUSTOMERS, {**GOOD, "deleted": True, "active": False}).deleted is True
    assert validate_record(CUSTOMERS, {**GOOD, "deleted": False}).deleted is False
    assert validate_record(CUSTOMERS, GOOD).deleted is False


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_deleted_that_is_not_a_boolean(value: object) -> None:
    assert "'deleted' must be true or false" in str(rejected({**GOOD, "deleted": value}))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"balance": float("nan")}, "not finite"),
        ({"nested": {"values": [1, float("inf")]}}, "not finite"),
        ({"name": "bad\x00name"}, "NUL character"),
        ({"tags": ["ok", "\ud800"]}, "lone UTF-16 surrogate"),
        ({"bad\x00key": 1}, "NUL character"),
        ({"custom": {1: "a"}}, "key that is not text"),
        ({"custom": {"when": datetime(2024, 1, 1)}}, "type datetime"),
    ],
)
def test_payload_the_store_cannot_hold_is_rejected(extra: dict[str, Any], expected: str) -> None:
    error = rejected({**GOOD, **extra})
    assert "payload cannot be stored" in str(error)
    assert expected in str(error)
    assert error.record_id == 42


def test_deeply_nested_json_payload_is_accepted() -> None:
    raw = {**GOOD, "custom": [{"a": [None, True, 1, 2.5, "x", {"b": []}]}]}
    assert validate_record(CUSTOMERS, raw).payload == raw


def test_message_is_clear_and_bounded() -> None:
    error = rejected({**GOOD, "id": "x" * 500})
    message = str(error)
    assert message.startswith("customers record 'xxx")
    assert len(message) < 300


def test_every_resource_uses_its_catalogue_key_and_cursor() -> None:
    for resource in RESOURCES.values():
        with pytest.raises(RecordValidationError) as caught:
            validate_record(resource, {resource.key: 1})
        assert caught.value.resource == resource.name
        assert repr(resource.cursor) in str(caught.value)
