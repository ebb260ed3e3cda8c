"""The alert a person receives: what happened, what the system already did, what to do.

An :class:`Alert` is built only from a credential's connection id, exception classes, their
secret-free messages (see :mod:`airflow_provider_servicetitan.errors`), ServiceTitan's ``traceId``
and task identifiers: never from a connection's password or extra, so it can be posted anywhere.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Alert", "AlertKind", "DetailValue", "make_incident_key"]

DetailValue = str | int | float | bool | None

# Slack refuses a header longer than 150 characters and a section text longer than 3000.
_SLACK_HEADER_LIMIT = 150
_SLACK_SECTION_LIMIT = 3000


class AlertKind(StrEnum):
    """What an alert is about. Compares equal to its string value."""

    CIRCUIT_OPENED = "circuit_opened"
    RETRIES_EXHAUSTED = "retries_exhausted"
    NEEDS_ATTENTION = "needs_attention"
    DEAD_LETTERS_OVER_THRESHOLD = "dead_letters_over_threshold"
    RESOLVED = "resolved"


_TITLES: dict[AlertKind, str] = {
    AlertKind.CIRCUIT_OPENED: "Circuit breaker opened",
    AlertKind.RETRIES_EXHAUSTED: "Retries exhausted",
    AlertKind.NEEDS_ATTENTION: "Credential needs attention",
    AlertKind.DEAD_LETTERS_OVER_THRESHOLD: "Too many failed records",
    AlertKind.RESOLVED: "Resolved",
}

_TITLES_BY_VALUE = {kind.value: title for kind, title in _TITLES.items()}


@dataclass(frozen=True)
class Alert:
    """One incident of one credential, ready to be rendered for a person.

    :param kind: what the alert is about, see :class:`AlertKind`.
    :param credential: the ServiceTitan connection id.
    :param summary: what happened.
    :param system_action: what the system already did about it.
    :param human_action: what a person should do.
    :param tenant_id: the ServiceTitan tenant, when known.
    :param error_class: class name of the error behind the alert.
    :param trace_id: ServiceTitan's ``traceId`` (quote it to ServiceTitan support).
    :param breaker_state: state of the circuit breaker, when it matters.
    :param log_url: link to the task log.
    :param incident_key: identity of the incident for deduplication; default
        ``credential|kind|error_class``.
    :param details: a few more facts (task, counts); never a secret.
    :param resolves: for a ``resolved`` alert, the kinds of incident it closes (``None``: all); once
        sent, the kinds it actually closed (see :meth:`closing`).
    """

    kind: AlertKind
    credential: str
    summary: str
    system_action: str
    human_action: str
    tenant_id: str | None = None
    error_class: str | None = None
    trace_id: str | None = None
    breaker_state: str | None = None
    log_url: str | None = None
    incident_key: str = ""
    details: Mapping[str, DetailValue] = field(default_factory=dict)
    resolves: tuple[AlertKind, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AlertKind(self.kind))
        if self.resolves is not None:
            resolves = tuple(dict.fromkeys(AlertKind(kind) for kind in self.resolves))
            if not resolves or AlertKind.RESOLVED in resolves:
                raise ValueError("resolves names kinds of incidents (not 'resolved'), or is None for all")
            object.__setattr__(self, "resolves", resolves)
        object.__setattr__(self, "details", dict(self.details))
        if not self.incident_key:
            object.__setattr__(self, "incident_key", make_incident_key(self.credential, self.kind, self.error_class))

    @property
    def title(self) -> str:
        """A short headline, e.g. ``Retries exhausted: servicetitan_acme``."""
        return f"{_TITLES[self.kind]}: {self.credential}"

    def with_details(self, **details: DetailValue) -> Alert:
        """A copy with ``details`` added (``None`` values are left out)."""
        added = {name: value for name, value in details.items() if value is not None}
        return dataclasses.replace(self, details={**self.details, **added})

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        data = dataclasses.asdict(self)
        data["kind"] = self.kind.value
        data["resolves"] = [kind.value for kind in self.resolves] if self.resolves is not None else None
        return data

    def closing(self, kinds: Sequence[str]) -> Alert:
        """This all-clear as it is sent: naming the incidents it closed (``kinds``, as the
        deduplication state knew them; a kind this version does not know is named as it is)."""
        names = ", ".join(_TITLES_BY_VALUE.get(kind, kind) for kind in kinds)
        known = tuple(AlertKind(kind) for kind in kinds if kind in _TITLES_BY_VALUE)
        closed = dataclasses.replace(
            self,
            summary=f"{self.summary} Closed its open incidents: {names}.",
            resolves=known or self.resolves,
        )
        return closed.with_details(closed=", ".join(kinds))

    def as_text(self, *, mrkdwn: bool = False) -> str:
        """The alert as lines of text; ``mrkdwn=True`` formats it for Slack (bold labels, escaped)."""
        esc = _slack_escape if mrkdwn else _same

        def label(name: str) -> str:
            return f"*{name}:*" if mrkdwn else f"{name}:"

        headline = f"[ServiceTitan] {self.title}"
        if self.tenant_id:
            headline += f" (tenant {self.tenant_id})"
        lines = [f"*{esc(headline)}*" if mrkdwn else headline, f"{label('What happened')} {esc(self.summary)}"]
        if self.error_class or self.trace_id:
            error = self.error_class or "unknown error"
            if self.trace_id:
                error += f", traceId {self.trace_id}"
            lines.append(f"{label('Error')} {esc(error)}")
        if self.breaker_state:
            lines.append(f"{label('Circuit breaker')} {esc(self.breaker_state)}")
        lines.append(f"{label('What the system did')} {esc(self.system_action)}")
        lines.append(f"{label('What to do')} {esc(self.human_action)}")
        if self.log_url:
            link = f"<{self.log_url}|open the task log>" if mrkdwn and _linkable(self.log_url) else self.log_url
            lines.append(f"{label('Task log')} {link}")
        if self.details:
            facts = ", ".join(f"{name}={value}" for name, value in self.details.items())
            lines.append(f"{label('Details')} {esc(facts)}")
        return "\n".join(lines)

    def as_slack_payload(self) -> dict[str, Any]:
        """A Slack incoming-webhook body: ``text`` (the fallback, complete) and simple blocks."""
        text = self.as_text(mrkdwn=True)
        body = text.split("\n", 1)[1] if "\n" in text else text
        return {
            "text": text,
            "blocks": [
                {
                    "type": "header",
                    "text": {
                        "type": "plain_text",
                        "text": _truncate(f"ServiceTitan: {self.title}", _SLACK_HEADER_LIMIT),
                    },
                },
                {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(body, _SLACK_SECTION_LIMIT)}},
            ],
        }

    def as_email(self) -> tuple[str, str]:
        """``(subject, html_body)`` for an email."""
        lines = self.as_text().split("\n")
        body = "<br>\n".join(html.escape(line) for line in lines[1:])
        return f"[ServiceTitan] {self.title}", f"<p><b>{html.escape(lines[0])}</b></p>\n<p>{body}</p>"


def make_incident_key(credential: str, kind: AlertKind | str, cause: str | None = None) -> str:
    """Identity of an incident: the same credential, kind and cause is the same incident."""
    return f"{credential}|{AlertKind(kind).value}|{cause or ''}"


def _same(text: str) -> str:
    return text


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _linkable(url: str) -> bool:
    return not any(char in url for char in "|<> ")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
