"""Tenants and their credentials, derived from the seed so that a demo can be reproduced.

They look like ServiceTitan's (``cid.``, ``cs1.``, ``ak1.`` prefixes) but are the sandbox's own
fake secrets: printing them is fine. A rotated secret comes from the seed too (see
:func:`rotated_secret`), so a test that rotates is as reproducible as one that does not.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

FIRST_TENANT_ID = 1001
_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class SandboxCredential:
    """What a client needs to call the sandbox for one tenant."""

    tenant_id: int
    client_id: str
    client_secret: str
    app_key: str


def tenant_ids(count: int) -> list[int]:
    """Tenant ids of a sandbox with ``count`` tenants: 1001, 1002, ..."""
    return [FIRST_TENANT_ID + index for index in range(count)]


def _secret(rng: random.Random, prefix: str, length: int) -> str:
    return prefix + "".join(rng.choice(_ALPHABET) for _ in range(length))


def app_key_for(seed: int) -> str:
    """The one application key of the sandbox."""
    return _secret(random.Random(f"{seed}:app-key"), "ak1.", 40)  # noqa: S311


def derive_credentials(seed: int, tenants: int) -> list[SandboxCredential]:
    """One client id/secret pair per tenant, all sharing the sandbox's app key."""
    app_key = app_key_for(seed)
    credentials = []
    for tenant_id in tenant_ids(tenants):
        rng = random.Random(f"{seed}:credential:{tenant_id}")  # noqa: S311
        credentials.append(
            SandboxCredential(
                tenant_id=tenant_id,
                client_id=_secret(rng, "cid.", 25),
                client_secret=_secret(rng, "cs1.", 60),
                app_key=app_key,
            )
        )
    return credentials


def rotated_secret(seed: int, tenant_id: int, rotation: int) -> str:
    """The client secret of ``tenant_id`` after its ``rotation``-th rotation (1, 2, ...) since start or reset."""
    return _secret(random.Random(f"{seed}:credential:{tenant_id}:rotation:{rotation}"), "cs1.", 60)  # noqa: S311
