"""Python client of the ``/_sandbox/`` control endpoints, usable from any process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import requests

_TIMEOUT = 30.0


class SandboxAdminError(RuntimeError):
    """A control endpoint refused the call (bad knob, unknown record, ...)."""


class SandboxAdmin:
    """Steer and inspect a running sandbox at ``base_url``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def _call(self, method: str, path: str, json: Any = None, *, wait: float = 0.0) -> Any:
        url = f"{self.base_url}/_sandbox/{path}"
        response = requests.request(method, url, json=json, timeout=_TIMEOUT + wait)
        if not response.ok:
            raise SandboxAdminError(f"{method} /_sandbox/{path} -> {response.status_code}: {response.text}")
        return response.json()

    def stats(self) -> dict[str, Any]:
        """Requests by endpoint/status/tenant, tokens issued, 429s, faults injected by kind."""
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def faults(self) -> dict[str, Any]:
        """The active fault knobs, outage window, burst state, export pages served and requests held."""
        result: dict[str, Any] = self._call("GET", "faults")
        return result

    def set_faults(self, profile: str | None = None, **knobs: Any) -> dict[str, Any]:
        """Switch to ``profile`` (or keep the current faults) with ``knobs`` on top; returns the result."""
        payload = dict(knobs) if profile is None else {"profile": profile, **knobs}
        result: dict[str, Any] = self._call("POST", "faults", payload)
        return result

    def wait_for_held(self, count: int = 1, timeout: float = 60.0) -> int:
        """Return once exactly ``count`` API requests are held (``hold_after_pages`` or the timeout fault).

        :raises SandboxAdminError: not so within ``timeout`` seconds.
        """
        result: int = self._call("POST", "held/wait", {"count": count, "timeout": timeout}, wait=timeout)[
            "held_requests"
        ]
        return result

    def revoke_tokens(self) -> int:
        """Invalidate every token issued so far; returns how many were live."""
        result: int = self._call("POST", "tokens/revoke")["revoked"]
        return result

    def rotate_secret(self, tenant: int, *, revoke_tokens: bool = False) -> str:
        """Give ``tenant``'s client id a new client secret (from the seed) and return it.

        The token endpoint refuses the old secret from now on. Tokens issued before stay valid
        until they expire unless ``revoke_tokens``. :attr:`SandboxServer.credentials` and
        :meth:`config` show the new secret.

        :raises SandboxAdminError: no such tenant (404).
        """
        result: str = self._call("POST", f"credentials/{tenant}/rotate", {"revoke_tokens": revoke_tokens})[
            "client_secret"
        ]
        return result

    def reset(self) -> None:
        """Data and client secrets back to the seed, stats zero, faults as at start, clock offset zero, no tokens."""
        self._call("POST", "reset")

    def mutate(
        self,
        tenant: int,
        resource: str,
        action: str,
        ids: Sequence[int] | None = None,
        count: int | None = None,
    ) -> dict[str, Any]:
        """``modify``/``create``/``deactivate``/``delete`` records; returns what changed."""
        payload = {"tenant": tenant, "resource": resource, "action": action, "ids": ids, "count": count}
        result: dict[str, Any] = self._call("POST", "mutate", payload)
        return result

    def truth(self, tenant: int, resource: str) -> list[dict[str, Any]]:
        """id, createdOn, modifiedOn, active and deleted of every record, deleted ones included."""
        result: list[dict[str, Any]] = self._call("GET", f"truth/{tenant}/{resource}")
        return result

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the sandbox clock forward; returns the new ``now`` and ``offset``."""
        result: dict[str, Any] = self._call("POST", "clock/advance", {"seconds": seconds})
        return result

    def config(self) -> dict[str, Any]:
        """The sandbox's settings, credentials and clock."""
        result: dict[str, Any] = self._call("GET", "config")
        return result
