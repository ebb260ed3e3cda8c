"""What may name a Redis key: one rule for every component that writes keys (breakers, alert dedup).

Names and namespaces end up inside Redis keys and, for the breaker, inside a Redis Cluster hash
tag (``{...}``), so they are limited to a safe alphabet and a bounded length.
"""

from __future__ import annotations

import re

__all__ = ["KEY_PART_PATTERN", "require_key_part"]

KEY_PART_PATTERN = re.compile(r"[A-Za-z0-9_.:/@-]{1,200}")


def require_key_part(value: str, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` (the setting called ``name``) matches :data:`KEY_PART_PATTERN`."""
    if not KEY_PART_PATTERN.fullmatch(value):
        raise ValueError(f"{name} must match {KEY_PART_PATTERN.pattern}, got {value!r}")
