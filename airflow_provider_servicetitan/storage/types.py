"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

JSON_DOCUMENT: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")
"""A JSON document: ``JSONB`` on PostgreSQL, JSON text on SQLite."""

AUTOINCREMENT_ID: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")
"""A surrogate key: SQLite only auto-increments a column declared ``INTEGER PRIMARY KEY``."""


class UtcDateTime(TypeDecorator[datetime]):
    """A moment in time, always given and returned as an aware UTC ``datetime``.

    PostgreSQL keeps it as ``timestamptz``. SQLite has no date type: SQLAlchemy stores fixed-width
    ``YYYY-MM-DD HH:MM:SS.ffffff`` text, which compares correctly in SQL only if every value is in
    the same zone, so values are converted to UTC before they are written, and naive values are
    refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; the store only takes aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
