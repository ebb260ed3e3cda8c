"""Re-exporting resources from an earlier point, as a person asks for it: checked before anything runs.

A re-export reads a resource's export feed again from its start or from a day, whatever its
checkpoint says, and stores it like any sync: upserts by id, so nothing is duplicated. The old
checkpoint stays until the re-export's first page commits, which replaces it in the same
transaction; from then on the re-export is the checkpoint, so an interrupted re-export is resumed
(by a retry of its run) or finished (by the next run) from where it stopped, never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

REEXPORT_FROM_START = "start"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SHOWN_CHARS = 40
_HOW = f"use {REEXPORT_FROM_START!r} (from scratch) or a date YYYY-MM-DD such as 2024-01-31"


@dataclass(frozen=True)
class Reexport:
    """Where a re-export starts: the start of the export feed (``since=None``) or a day."""

    since: date | None

    @property
    def export_from(self) -> str | None:
        """The export feed's ``from``: nothing for its start, else the date, which the feed accepts."""
        return None if self.since is None else self.since.isoformat()

    def __str__(self) -> str:
        return REEXPORT_FROM_START if self.since is None else self.since.isoformat()


def parse_reexport_from(value: object, *, today: date | None = None) -> Reexport | None:
    """Read a ``reexport_from`` value: ``None`` or blank for no re-export.

    :param today: the current UTC day (default: now); a later day is refused, since resuming from
        a point in the future would skip the changes made until then.
    :raises ValueError: the value is neither ``start`` nor a date up to today.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"reexport_from must be text: {_HOW}; got {type(value).__name__}")
    text = value.strip()
    if text == REEXPORT_FROM_START:
        return Reexport(since=None)
    shown = text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}..."
    if not _DATE.fullmatch(text):
        raise ValueError(f"reexport_from {shown!r} is not valid: {_HOW}")
    try:
        since = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"reexport_from {shown!r} is not a real date: {_HOW}") from None
    today = today or datetime.now(UTC).date()
    if since > today:
        raise ValueError(f"reexport_from {shown!r} is in the future (today is {today.isoformat()} UTC): {_HOW}")
    return Reexport(since=since)


def parse_reexport_resources(value: str | Sequence[str] | None, allowed: Sequence[str]) -> list[str]:
    """The resources named by ``value``: a list, or comma-separated text as a template renders it.

    :raises ValueError: a name is not one of ``allowed``.
    """
    if value is None:
        return []
    names = value.split(",") if isinstance(value, str) else list(value)
    chosen = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    unknown = [name for name in chosen if name not in allowed]
    if unknown:
        raise ValueError(
            f"reexport_resources names {', '.join(repr(name[:_SHOWN_CHARS]) for name in unknown)}, "
            f"which are not among the resources synced here: {', '.join(allowed)}"
        )
    return chosen


def check_reexport_request(
    reexport_from: object,
    connection: object,
    resources: str | Sequence[str] | None,
    *,
    connections: Sequence[str],
    exportable: Sequence[str],
) -> Reexport | None:
    """Check a person's re-export request for a run syncing ``connections`` (the DAG's params).

    A re-export names its start, exactly one of the run's connections and at least one resource;
    without a start, neither of the others may be given (a half-filled form is a mistake).

    :raises ValueError: saying what is wrong and how to fix it.
    """
    reexport = parse_reexport_from(reexport_from)
    names = parse_reexport_resources(resources, exportable)
    if reexport is None:
        if connection or names:
            raise ValueError(f"reexport_connection and reexport_resources need reexport_from: {_HOW}")
        return None
    if not isinstance(connection, str) or connection not in connections:
        raise ValueError(
            f"reexport_connection must be one of the connections of this run ({', '.join(connections)}), "
            f"got {str(connection)[:_SHOWN_CHARS]!r}"
        )
    if not names:
        raise ValueError(f"reexport_resources must name the resources to re-export, among: {', '.join(exportable)}")
    return reexport
