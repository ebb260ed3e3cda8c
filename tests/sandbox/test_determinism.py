"""The same seed gives the same credentials and the same bytes; another seed does not."""

from __future__ import annotations

from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES, RESOURCES
from airflow_provider_servicetitan.sandbox import SandboxConfig, SandboxServer


def _responses(api) -> list[bytes]:
    bodies = []
    for resource in RESOURCES:
        for page in (1, 3):
            response = api.get(api.list_path(resource), page=page, pageSize=30, active="Any", includeTotal="true")
            bodies.append(response.content)
    for resource in EXPORTABLE_RESOURCES:
        first = api.get(api.export_path(resource))
        bodies.append(first.content)
        bodies.append(api.get(api.export_path(resource), **{"from": first.json()["continueFrom"]}).content)
    return bodies


def test_same_seed_same_bytes_other_seed_other_bytes(start_sandbox, make_api):
    one, two, other = start_sandbox(seed=42), start_sandbox(seed=42), start_sandbox(seed=43)

    bodies = [_responses(make_api(sandbox)) for sandbox in (one, two, other)]

    assert bodies[0] == bodies[1]
    assert all(a != b for a, b in zip(bodies[0], bodies[2], strict=True))
    assert one.admin.truth(1002, "jobs") == two.admin.truth(1002, "jobs")


def test_same_seed_same_credentials():
    first = SandboxServer(SandboxConfig(seed=5, tenants=3)).credentials
    second = SandboxServer(SandboxConfig(seed=5, tenants=3)).credentials
    other = SandboxServer(SandboxConfig(seed=6, tenants=3)).credentials

    assert first == second
    assert [c.tenant_id for c in first] == [1001, 1002, 1003]
    assert len({c.app_key for c in first}) == 1
    assert len({c.client_secret for c in first}) == 3
    assert first[0].client_id.startswith("cid.")
    assert first[0].client_secret.startswith("cs1.")
    assert first[0].app_key.startswith("ak1.")
    assert {c.client_id for c in first}.isdisjoint(c.client_id for c in other)


def test_mutations_picked_by_count_are_reproducible(sandbox):
    first = sandbox.admin.mutate(1001, "customers", "modify", count=5)["changed"]
    sandbox.admin.reset()
    again = sandbox.admin.mutate(1001, "customers", "modify", count=5)["changed"]

    assert [row["id"] for row in first] == [row["id"] for row in again]
