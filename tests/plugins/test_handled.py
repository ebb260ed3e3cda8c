"""A dead letter marked handled by a person: closed with a note, once, in SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.plugins.handled import HANDLED_RUN_PREFIX, mark_handled, notes
from airflow_provider_servicetitan.storage import DeadLetterIn, SyncStore


def _park(store: SyncStore, credential: str = "a") -> int:
    store.commit_page(
        credential=credential,
        tenant_id=1001,
        resource="customers",
        run_id="run1",
        records=[],
        dead_letters=[DeadLetterIn(record_id=None, raw="{}", error_class="E", message="no id")],
        continue_from=None,
    )
    return store.unresolved_dead_letters(credential)[-1].id


def test_marked_handled_it_is_closed_with_who_and_why(store: SyncStore) -> None:
    letter_id = _park(store)

    kept = mark_handled(store, letter_id, user="ops@example.com", note="  deleted upstream  ")

    assert kept is not None
    assert (kept.credential, kept.handled_by, kept.note) == ("a", "ops@example.com", "deleted upstream")
    letter = store.get_dead_letter(letter_id)
    assert letter is not None
    assert letter.resolved_at is not None
    assert letter.resolved_run_id == f"{HANDLED_RUN_PREFIX}ops@example.com"
    assert store.count_unresolved_dead_letters("a") == 0
    assert [(n.handled_by, n.note) for n in notes(store, letter_id)] == [("ops@example.com", "deleted upstream")]


def test_a_resolved_letter_is_not_handled_again(store: SyncStore) -> None:
    letter_id = _park(store)
    assert mark_handled(store, letter_id, user="one", note="first") is not None

    assert mark_handled(store, letter_id, user="two", note="second") is None
    assert [n.handled_by for n in notes(store, letter_id)] == ["one"]


def test_unknown_letters_and_empty_notes_are_refused(store: SyncStore) -> None:
    letter_id = _park(store)

    with pytest.raises(KeyError):
        mark_handled(store, 424242, user="ops", note="x")
    with pytest.raises(ValueError, match="note"):
        mark_handled(store, letter_id, user="ops", note="   ")
    assert store.count_unresolved_dead_letters("a") == 1
