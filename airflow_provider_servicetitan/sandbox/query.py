"""Query strings of the list and export endpoints, checked as ServiceTitan does: 400 with field errors.

Parameter names match case-insensitively (as ASP.NET binds them); unknown parameters are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from airflow_provider_servicetitan.sandbox.cursor import START, Position, decode_position, position_of_date
from airflow_provider_servicetitan.sandbox.data import Record
from airflow_provider_servicetitan.sandbox.problems import ProblemError
from airflow_provider_servicetitan.sandbox.timestamps import parse_ms

MAX_IDS = 50
DEFAULT_PAGE_SIZE = 50
_ACTIVE = {"true": True, "false": False, "any": None}
_SORT_FIELDS = {"id": "id", "modifiedon": "modified_ms", "createdon": "created_ms"}


class _Params:
    """Typed reads of a query string that collect every error before failing once."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self._values = {name.lower(): value for name, value in params.items()}
        self._errors: dict[str, list[str]] = {}

    def get(self, name: str) -> str | None:
        value = self._values.get(name.lower())
        return value if value else None

    def error(self, name: str, message: str) -> None:
        self._errors.setdefault(name, []).append(message)

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.error(name, f"The value '{raw}' is not a valid integer.")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" and {maximum}"
            self.error(name, f"The field {name} must be between {minimum}{upper}.")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        self.error(name, f"The value '{raw}' is not valid for {name}.")
        return default

    def moment(self, name: str) -> int | None:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            return parse_ms(raw)
        except ValueError:
            self.error(name, f"The value '{raw}' is not a valid date-time.")
            return None

    def raise_if_invalid(self) -> None:
        if self._errors:
            raise ProblemError(400, "One or more validation errors occurred.", errors=self._errors)


def _within(value: int, on_or_after: int | None, before: int | None) -> bool:
    return (on_or_after is None or value >= on_or_after) and (before is None or value < before)


@dataclass(frozen=True)
class ListQuery:
    """A validated list query; ``active`` is ``None`` for ``Any``."""

    page: int
    page_size: int
    include_total: bool
    ids: frozenset[int] | None
    active: bool | None
    modified_on_or_after: int | None
    modified_before: int | None
    created_on_or_after: int | None
    created_before: int | None
    sort_field: str
    descending: bool

    def matches(self, record: Record) -> bool:
        """Whether ``record`` passes the filters; deleted records never do."""
        return (
            not record.deleted
            and (self.active is None or record.active is self.active)
            and (self.ids is None or record.id in self.ids)
            and _within(record.modified_ms, self.modified_on_or_after, self.modified_before)
            and _within(record.created_ms, self.created_on_or_after, self.created_before)
        )

    def select(self, records: Iterable[Record]) -> tuple[list[Record], bool, int]:
        """The requested page of ``records`` (given in id order), whether more follow, and the total."""
        matching = [record for record in records if self.matches(record)]
        if self.sort_field != "id" or self.descending:
            matching.sort(key=lambda record: (getattr(record, self.sort_field), record.id), reverse=self.descending)
        start = (self.page - 1) * self.page_size
        return matching[start : start + self.page_size], start + self.page_size < len(matching), len(matching)


def _ids(params: _Params) -> frozenset[int] | None:
    raw = params.get("ids")
    if raw is None:
        return None
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if len(parts) > MAX_IDS:
        params.error("ids", f"At most {MAX_IDS} ids can be requested at once.")
    if not all(part.isdigit() for part in parts):
        params.error("ids", "ids must be a comma-separated list of integers.")
        return None
    return frozenset(int(part) for part in parts)


def _active(params: _Params) -> bool | None:
    raw = params.get("active") or "True"
    if raw.lower() not in _ACTIVE:
        params.error("active", "active must be True, False or Any.")
        return True
    return _ACTIVE[raw.lower()]


def _sort(params: _Params) -> tuple[str, bool]:
    raw = params.get("sort") or "+Id"
    descending = raw.startswith("-")
    field = _SORT_FIELDS.get(raw.lstrip("+-").lower())
    if field is None:
        params.error("sort", "sort must be +/- followed by Id, ModifiedOn or CreatedOn.")
        return "id", False
    return field, descending


def parse_list_query(raw: Mapping[str, str], max_page_size: int) -> ListQuery:
    """Validate the query of a list endpoint.

    :raises ProblemError: 400 listing every invalid parameter.
    """
    params = _Params(raw)
    sort_field, descending = _sort(params)
    query = ListQuery(
        page=params.integer("page", 1, 1),
        page_size=params.integer("pageSize", DEFAULT_PAGE_SIZE, 1, max_page_size),
        include_total=params.boolean("includeTotal", False),
        ids=_ids(params),
        active=_active(params),
        modified_on_or_after=params.moment("modifiedOnOrAfter"),
        modified_before=params.moment("modifiedBefore"),
        created_on_or_after=params.moment("createdOnOrAfter"),
        created_before=params.moment("createdBefore"),
        sort_field=sort_field,
        descending=descending,
    )
    params.raise_if_invalid()
    return query


@dataclass(frozen=True)
class ExportQuery:
    """A validated export query: where to go on from, and whether to show the latest changes."""

    after: Position
    include_recent_changes: bool


def _export_start(params: _Params) -> Position:
    raw = params.get("from")
    if raw is None:
        return START
    try:
        return position_of_date(parse_ms(raw))
    except ValueError:
        pass
    try:
        return decode_position(raw)
    except ValueError:
        params.error("from", "from must be a continuation token from a previous export or a date.")
        return START


def parse_export_query(raw: Mapping[str, str]) -> ExportQuery:
    """Validate the query of an export feed.

    :raises ProblemError: 400 listing every invalid parameter.
    """
    params = _Params(raw)
    query = ExportQuery(_export_start(params), params.boolean("includeRecentChanges", False))
    params.raise_if_invalid()
    return query
