"""Validation of the records ServiceTitan sends, before anything is stored.

A record that fails here is not dropped: the caller parks it as a dead letter together with its raw
payload and the error, and the recovery task tries it again later. The checks are the ones the
store relies on, so a page of validated records can always be written in one transaction: an id out
of BIGINT range, a NaN or a NUL character would otherwise make PostgreSQL refuse the whole page.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from airflow_provider_servicetitan.catalog import Resource
from airflow_provider_servicetitan.errors import RecordValidationError
from airflow_provider_servicetitan.storage.records import MAX_RECORD_ID, ValidRecord, record_number

# RFC 3339 date-time. Any number of fractional digits is valid RFC 3339 (.NET sends up to 7);
# digits beyond microseconds are truncated. RFC 3339 allows a space instead of the ``T``.
_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})"
    r"(?:\.(?P<frac>\d+))?(?P<offset>[Zz]|[+-]\d{2}:\d{2})"
)
_SHOWN_CHARS = 80
_UNFETCHABLE = ": it names no record, so it cannot be fetched again and needs a person"


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 date-time (``Z`` or an offset required) into an aware UTC ``datetime``.

    :raises ValueError: ``text`` is not an RFC 3339 date-time, or names an impossible moment.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("expected an RFC 3339 date-time such as 2024-03-01T12:00:00.1234567Z")
    offset_text = match["offset"]
    if offset_text in ("Z", "z"):
        tz: timezone = UTC
    else:
        hours, minutes = int(offset_text[1:3]), int(offset_text[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"offset {offset_text} is out of range")
        delta = timedelta(hours=hours, minutes=minutes)
        tz = timezone(-delta if offset_text[0] == "-" else delta)
    micros = int((match["frac"] or "")[:6].ljust(6, "0"))
    try:
        year, month, day = (int(part) for part in match["date"].split("-"))
        moment = datetime(year, month, day, int(match["h"]), int(match["m"]), int(match["s"]), micros, tzinfo=tz)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid moment: {exc}") from None


def validate_record(resource: Resource, raw: object) -> ValidRecord:
    """Check one record of ``resource`` as decoded from the API's JSON, and return its typed form.

    :raises RecordValidationError: the record cannot be stored; ``record_id`` is the raw id when the
        record had one (even a malformed one), so the dead letter can name it.
    """
    if not isinstance(raw, dict):
        raise _invalid(resource, None, f"expected a JSON object, got {_describe(raw)}")
    raw_id = raw.get(resource.key)
    number = record_number(raw_id)
    if raw_id is None:
        raise _invalid(resource, None, f"has no {resource.key!r}{_UNFETCHABLE}")
    if isinstance(raw_id, bool) or not isinstance(raw_id, int):
        names = _UNFETCHABLE if number is None else f"; it names record {number}, which recovery fetches again"
        raise _invalid(resource, raw_id, f"{resource.key!r} must be an integer, got {_describe(raw_id)}{names}")
    if number is None:
        raise _invalid(
            resource,
            raw_id,
            f"{resource.key!r} must be between 1 and {MAX_RECORD_ID}, got {raw_id}{_UNFETCHABLE}",
        )

    raw_cursor = raw.get(resource.cursor)
    if raw_cursor is None:
        raise _invalid(resource, raw_id, f"has no {resource.cursor!r}")
    if not isinstance(raw_cursor, str):
        raise _invalid(resource, raw_id, f"{resource.cursor!r} must be a date-time string, got {_describe(raw_cursor)}")
    try:
        modified_on = parse_rfc3339(raw_cursor)
    except ValueError as exc:
        raise _invalid(resource, raw_id, f"{resource.cursor!r} {_show(raw_cursor)} is unreadable: {exc}") from None

    active = _flag(resource, raw, raw_id, "active", default=True)
    deleted = _flag(resource, raw, raw_id, "deleted", default=False)
    problem = _json_problem(raw)
    if problem is not None:
        raise _invalid(resource, raw_id, f"payload cannot be stored: it contains {problem}")
    return ValidRecord(id=number, modified_on=modified_on, active=active, deleted=deleted, payload=dict(raw))


def _flag(resource: Resource, raw: dict[Any, Any], raw_id: int, name: str, *, default: bool) -> bool:
    if name not in raw:
        return default
    value = raw[name]
    if not isinstance(value, bool):
        raise _invalid(resource, raw_id, f"{name!r} must be true or false, got {_describe(value)}")
    return value


def _json_problem(value: object) -> str | None:
    """What in ``value`` JSON (or PostgreSQL's JSONB) cannot hold, or ``None`` if all is well."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"a number that is not finite ({item!r})"
        elif isinstance(item, str):
            problem = _text_problem(item)
            if problem is not None:
                return problem
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"a key that is not text ({key!r})"
                problem = _text_problem(key)
                if problem is not None:
                    return problem
                pending.append(child)
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif item is not None and not isinstance(item, bool | int):
            return f"a value of type {type(item).__name__}, which JSON cannot hold"
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\u0000), which PostgreSQL cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone UTF-16 surrogate, which is not valid Unicode"
    return None


def _invalid(resource: Resource, record_id: object, problem: str) -> RecordValidationError:
    subject = f"{resource.name} record" if record_id is None else f"{resource.name} record {_show(record_id)}"
    return RecordValidationError(f"{subject}: {problem}", resource=resource.name, record_id=record_id)


def _describe(value: object) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "text", list: "a list", dict: "an object"}
    kind = "null" if value is None else kinds.get(type(value), type(value).__name__)
    return kind if value is None else f"{kind} {_show(value)}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[: _SHOWN_CHARS - 3]}..."
