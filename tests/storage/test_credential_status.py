"""Credential health: round trip, and ``since`` only moves when the status changes."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from airflow_provider_servicetitan.storage import SyncStore
from tests.storage.factories import CREDENTIAL


def test_round_trip(store: SyncStore) -> None:
    assert store.get_credential_status(CREDENTIAL) is None
    saved = store.set_credential_status(CREDENTIAL, "needs_attention", "401 twice: secret rejected", "fp-1")
    assert store.get_credential_status(CREDENTIAL) == saved
    assert (saved.credential, saved.status, saved.reason, saved.secret_fingerprint) == (
        CREDENTIAL,
        "needs_attention",
        "401 twice: secret rejected",
        "fp-1",
    )
    assert saved.since == saved.updated_at
    assert saved.since.tzinfo is not None
    assert store.get_credential_status("other") is None


def test_since_stays_while_the_status_stays_and_moves_when_it_changes(store: SyncStore) -> None:
    first = store.set_credential_status(CREDENTIAL, "degraded", "breaker open", "fp-1")
    same = store.set_credential_status(CREDENTIAL, "degraded", "still open", "fp-1")
    assert same.since == first.since
    assert same.updated_at > first.updated_at
    assert same.reason == "still open"
    changed = store.set_credential_status(CREDENTIAL, "ok", None, "fp-2")
    assert changed.since > same.since
    assert (changed.status, changed.reason, changed.secret_fingerprint) == ("ok", None, "fp-2")


def test_invalid_status_is_refused_by_the_store_and_by_the_database(store: SyncStore) -> None:
    with pytest.raises(ValueError, match="credential status must be one of"):
        store.set_credential_status(CREDENTIAL, "broken")  # type: ignore[arg-type]
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO servicetitan_credential_status (credential, status, since, updated_at) "
                "VALUES ('c', 'broken', :now, :now)"
            ),
            {"now": "2024-01-01 00:00:00"},
        )
    assert store.get_credential_status(CREDENTIAL) is None
