"""Catalogue of the ServiceTitan resources the provider knows how to read.

One entry per resource: which API module serves it, its list and export paths, its primary key
and the field that orders its changes. The client, storage, the sync engine, the operators and the
sandbox all read this table, so a resource is added in exactly one place. It sits at the bottom of
the layers (it imports nothing of the provider) so that every layer, the sandbox included, may.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """One ServiceTitan resource, e.g. ``customers`` in the ``crm`` module."""

    name: str
    module: str
    exportable: bool
    key: str = "id"
    cursor: str = "modifiedOn"

    def list_path(self, tenant_id: int) -> str:
        """Path of the paged list endpoint, e.g. ``/crm/v2/tenant/42/customers``."""
        return f"/{self.module}/v2/tenant/{tenant_id}/{self.name}"

    def export_path(self, tenant_id: int) -> str:
        """Path of the export feed, e.g. ``/crm/v2/tenant/42/export/customers``."""
        if not self.exportable:
            raise ValueError(f"resource {self.name!r} has no export feed; use its list endpoint")
        return f"/{self.module}/v2/tenant/{tenant_id}/export/{self.name}"


RESOURCES: dict[str, Resource] = {
    resource.name: resource
    for resource in (
        Resource("customers", "crm", exportable=True),
        Resource("locations", "crm", exportable=True),
        Resource("jobs", "jpm", exportable=True),
        Resource("appointments", "jpm", exportable=True),
        Resource("invoices", "accounting", exportable=True),
        Resource("payments", "accounting", exportable=True),
        Resource("technicians", "settings", exportable=True),
        Resource("employees", "settings", exportable=False),
    )
}

EXPORTABLE_RESOURCES: tuple[str, ...] = tuple(name for name, res in RESOURCES.items() if res.exportable)


def get_resource(name: str) -> Resource:
    """Return the catalogue entry for ``name`` or raise ``KeyError`` listing the known ones."""
    try:
        return RESOURCES[name]
    except KeyError:
        known = ", ".join(sorted(RESOURCES))
        raise KeyError(f"unknown ServiceTitan resource {name!r}; known resources: {known}") from None
