"""Export continuation tokens: an opaque encoding of a position (modifiedOn, id) in the feed.

The feed is ordered by (modifiedOn, id); a token names the last record served, so reading on
from it is stable whatever changed in between: a record modified later moves behind the token and
comes again.
"""

from __future__ import annotations

import base64
import binascii
import re

Position = tuple[int, int]
"""(modifiedOn in ms, id) of the last record served; the feed goes on strictly after it."""

START: Position = (0, 0)
_PLAIN = re.compile(r"st1:(\d+):(\d+)")


def encode_position(position: Position) -> str:
    """The continuation token for ``position``."""
    modified_ms, record_id = position
    return base64.urlsafe_b64encode(f"st1:{modified_ms}:{record_id}".encode()).decode().rstrip("=")


def decode_position(token: str) -> Position:
    """The position a continuation token names.

    :raises ValueError: ``token`` was not made by :func:`encode_position`.
    """
    try:
        plain = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("not a continuation token") from None
    match = _PLAIN.fullmatch(plain)
    if match is None:
        raise ValueError("not a continuation token")
    return int(match[1]), int(match[2])


def position_of_date(date_ms: int) -> Position:
    """The position just before the first record modified on or after ``date_ms``."""
    return date_ms, 0
