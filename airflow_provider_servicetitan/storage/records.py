"""What a record is to the store: its validated shape and the one reading of record ids.

The store writes :class:`ValidRecord` rows and remembers, for each dead letter, the number it can
be fetched again by (:func:`record_number`). Both are defined here, below the sync engine that
produces them, so storage depends on nothing above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_RECORD_ID = 2**63 - 1
"""Largest id the store can hold (a signed 64-bit integer, ``BIGINT``)."""

# An id as text: digits, optionally behind the ``ST-`` prefix some exports put in front of the number.
_ID_TEXT = re.compile(r"(?:ST-)?(?P<number>[0-9]{1,19})")


@dataclass(frozen=True)
class ValidRecord:
    """A record that passed :func:`~airflow_provider_servicetitan.sync.records.validate_record`: safe to upsert.

    :param id: the record's ServiceTitan id (1 .. ``MAX_RECORD_ID``).
    :param modified_on: its ``modifiedOn``, timezone-aware UTC.
    :param active: its ``active`` flag (``True`` when the API leaves it out).
    :param deleted: its ``deleted`` flag (export feeds mark deleted records; ``False`` otherwise).
    :param payload: the whole record as received.
    """

    id: int
    modified_on: datetime
    active: bool
    deleted: bool
    payload: dict[str, Any]


def record_number(raw_id: object) -> int | None:
    """The record number an id names, or ``None`` when it names none: the one reading of record ids.

    An integer in 1 .. ``MAX_RECORD_ID`` is its own number; text of ASCII digits, or ``ST-``
    followed by them (as in ``"ST-71228018"``), names that number (whitespace around it is
    ignored). Anything else (no id, a boolean, a float, other text, out of range) names no record:
    it cannot be fetched again by id. Validation uses it to tell a malformed id from an unusable
    one, the store to remember what a dead letter can be re-fetched by, recovery to match the
    records it re-fetched.
    """
    if isinstance(raw_id, bool):
        return None
    if isinstance(raw_id, int):
        number = raw_id
    elif isinstance(raw_id, str) and (match := _ID_TEXT.fullmatch(raw_id.strip())):
        number = int(match["number"])
    else:
        return None
    return number if 0 < number <= MAX_RECORD_ID else None
