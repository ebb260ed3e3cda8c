"""What every part of the sync store shares: the engine, the tables and how rows become models.

``SyncStore`` is composed of mixins over :class:`StoreBase` (one per kind of row: records and
checkpoints, dead letters, the run log, credential status) rather than of repository objects it
delegates to. With mixins every public method is written once and stays on ``SyncStore``, and the
transactions that span several kinds of rows (``SyncStore.commit_page``) call each part's
connection-level helper inside one ``engine.begin()``, with no forwarding layer to keep in step.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Engine, Row, Select, Table, select
from sqlalchemy.engine import URL
from sqlalchemy.pool import StaticPool

from airflow_provider_servicetitan.catalog import get_resource
from airflow_provider_servicetitan.storage.dialects import SUPPORTED_DIALECTS, create_store_engine
from airflow_provider_servicetitan.storage.schema import Tables, build_tables

_T = TypeVar("_T")


class StoreBase:
    """The engine and tables of one store, and the reads every part of it uses (parameters: see ``SyncStore``)."""

    def __init__(self, engine_or_url: Engine | str | URL, *, table_prefix: str = "servicetitan") -> None:
        self.tables: Tables = build_tables(table_prefix)
        self.table_prefix = table_prefix
        self._owns_engine = not isinstance(engine_or_url, Engine)
        self.engine = create_store_engine(engine_or_url) if not isinstance(engine_or_url, Engine) else engine_or_url
        if self.engine.dialect.name not in SUPPORTED_DIALECTS:
            if self._owns_engine:
                self.engine.dispose()
            raise ValueError(
                f"the sync store supports {' and '.join(SUPPORTED_DIALECTS)}, not {self.engine.dialect.name}"
            )

    @property
    def one_writer_at_a_time(self) -> bool:
        """Whether every thread shares one database connection (in-memory SQLite), so that writers
        must take turns in one thread: their transactions would otherwise interleave."""
        return isinstance(self.engine.pool, StaticPool)

    def close(self) -> None:
        """Release the connections of an engine the store created (a given engine is left alone)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _record_table(self, resource: str) -> Table:
        return self.tables.records[get_resource(resource).name]

    def _fetch_one(self, cls: type[_T], query: Select[Any]) -> _T | None:
        with self.engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else to_model(cls, row)

    def _fetch_all(self, cls: type[_T], query: Select[Any]) -> list[_T]:
        with self.engine.connect() as conn:
            return [to_model(cls, row) for row in conn.execute(query)]


def now() -> datetime:
    return datetime.now(UTC)


def storable(text: str | None) -> str | None:
    """``text`` as PostgreSQL can keep it: NUL and lone surrogates written as escapes, the rest unchanged."""
    if text is None:
        return None
    return text.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")


def select_fields(cls: type[Any], table: Table) -> Select[Any]:
    """Select the columns of ``table`` named like the fields of dataclass ``cls``."""
    return select(*(table.c[field.name] for field in fields(cls)))


def to_model(cls: type[_T], row: Row[Any]) -> _T:
    return cls(**row._mapping)
