"""Validation of the numbers the resilience components are configured with.

One set of checks, so that every setting is refused the same way: a ``ValueError`` that names the
setting and shows the value. ``bool`` is refused although Python counts it as an ``int``:
``failure_threshold=True`` is a mistake, not 1.
"""

from __future__ import annotations

import math
from typing import TypeGuard

__all__ = ["is_finite_number", "require_positive", "require_positive_int"]


def is_finite_number(value: object) -> TypeGuard[float]:
    """Whether ``value`` is an ``int`` or ``float`` (not a ``bool``), neither infinite nor NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def require_positive(value: object, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    if not is_finite_number(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def require_positive_int(value: object, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
