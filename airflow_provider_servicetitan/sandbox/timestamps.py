"""Timestamps as the sandbox keeps them: integer milliseconds since the Unix epoch, shown as RFC 3339 UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware ``datetime`` (exact: no float rounding)."""
    delta = moment - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def format_ms(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2024-03-01T12:00:00.123Z``."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def parse_ms(text: str) -> int:
    """Parse a date (``2020-01-01``) or an RFC 3339 date-time; naive values are UTC.

    :raises ValueError: ``text`` is not a date or date-time.
    """
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return to_ms(moment)
