"""Which API modules a tenant has licensed: all of them, except those listed as unlicensed."""

from __future__ import annotations

from collections.abc import Iterable

from airflow_provider_servicetitan.catalog import RESOURCES

MODULES: frozenset[str] = frozenset(resource.module for resource in RESOURCES.values())


def checked_modules(modules: Iterable[str]) -> tuple[str, ...]:
    """``modules`` as a sorted tuple.

    :raises ValueError: a module the catalogue does not know.
    """
    names = tuple(sorted({module.strip() for module in modules}))
    unknown = set(names) - MODULES
    if unknown:
        raise ValueError(f"unknown modules {sorted(unknown)}; modules: {', '.join(sorted(MODULES))}")
    return names
