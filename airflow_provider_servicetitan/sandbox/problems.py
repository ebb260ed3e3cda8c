"""RFC 7807 problem answers, as ServiceTitan sends them: type, title, status, traceId, errors, data."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

_RFC7231 = "https://tools.ietf.org/html/rfc7231#section-"
_TYPES = {
    400: _RFC7231 + "6.5.1",
    401: "https://tools.ietf.org/html/rfc7235#section-3.1",
    403: _RFC7231 + "6.5.3",
    404: _RFC7231 + "6.5.4",
    405: _RFC7231 + "6.5.5",
    409: _RFC7231 + "6.5.8",
    429: "https://tools.ietf.org/html/rfc6585#section-4",
    500: _RFC7231 + "6.6.1",
    502: _RFC7231 + "6.6.3",
    503: _RFC7231 + "6.6.4",
    504: _RFC7231 + "6.6.5",
}


def new_trace_id() -> str:
    """A W3C-traceparent-shaped trace id, unique per answer."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"


class ProblemError(Exception):
    """An error answer; raised anywhere in a handler, turned into a response by the app."""

    def __init__(
        self,
        status: int,
        title: str | None = None,
        *,
        detail: str | None = None,
        errors: Mapping[str, Sequence[str]] | None = None,
        retry_after: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.errors = errors
        self.retry_after = retry_after
        self.extra = extra
        super().__init__(f"{status} {self.title}")

    def response(self) -> JSONResponse:
        """The problem as an ``application/problem+json`` answer with a fresh ``traceId``."""
        body: dict[str, Any] = dict(self.extra or {})
        body.update(
            type=_TYPES.get(self.status, _RFC7231 + "6"),
            title=self.title,
            status=self.status,
            traceId=new_trace_id(),
        )
        if self.detail is not None:
            body["detail"] = self.detail
        body["errors"] = {field: list(messages) for field, messages in (self.errors or {}).items()}
        body["data"] = {}
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        return JSONResponse(body, status_code=self.status, headers=headers, media_type="application/problem+json")
