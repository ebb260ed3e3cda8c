"""Several workers writing to one database at once, each through its own store (own connections)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from airflow_provider_servicetitan.storage import SyncStore
from tests.storage.factories import CREDENTIAL, RUN, commit, dead_letter, record, saved_checkpoint, stored_record

WORKERS = 6
T = TypeVar("T")


@pytest.fixture
def worker_stores(store: SyncStore, store_url: str) -> Iterator[list[SyncStore]]:
    stores = [SyncStore(store_url) for _ in range(WORKERS)]
    yield stores
    for worker_store in stores:
        worker_store.close()


def run_together(stores: list[SyncStore], work: Callable[[int, SyncStore], T]) -> list[T]:
    """Run ``work`` on every store at the same moment; re-raise the first failure."""
    barrier = threading.Barrier(len(stores))

    def start(index: int, worker_store: SyncStore) -> T:
        barrier.wait(timeout=10)
        return work(index, worker_store)

    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        futures = [pool.submit(start, index, worker_store) for index, worker_store in enumerate(stores)]
        return [future.result(timeout=60) for future in futures]


def test_concurrent_pages_of_many_credentials_all_commit(store: SyncStore, worker_stores: list[SyncStore]) -> None:
    pages = 5

    def sync(index: int, worker_store: SyncStore) -> None:
        for page in range(pages):
            first_id = index * 1000 + page * 10 + 1
            commit(
                worker_store,
                [record(first_id + n, f"2024-01-{page + 1:02d}T00:00:00Z") for n in range(10)],
                [dead_letter(f"bad-{index}-{page}")],
                credential=f"credential_{index}",
                tenant_id=index + 1,
                continue_from=f"tok-{page}",
            )

    run_together(worker_stores, sync)
    log = store.get_run_log(RUN)
    assert len(log) == WORKERS
    for index, row in enumerate(log):
        assert (row.credential, row.pages, row.records_successful, row.records_failed) == (
            f"credential_{index}",
            pages,
            pages * 10,
            pages,
        )
        assert store.count_records(index + 1, "customers") == pages * 10
        checkpoint = store.get_checkpoint(f"credential_{index}", "customers")
        assert checkpoint is not None
        assert checkpoint.continue_from == f"tok-{pages - 1}"


def test_concurrent_pages_of_one_run_row_add_up(store: SyncStore, worker_stores: list[SyncStore]) -> None:
    """Counts are added in SQL, so concurrent pages counted into one log row lose nothing."""

    def sync(index: int, worker_store: SyncStore) -> None:
        commit(worker_store, [record(index + 1, "2024-01-01T00:00:00Z")], continue_from=f"tok-{index}")

    run_together(worker_stores, sync)
    (row,) = store.get_run_log(RUN)
    assert (row.pages, row.records_successful) == (WORKERS, WORKERS)
    assert saved_checkpoint(store).continue_from in {f"tok-{index}" for index in range(WORKERS)}


def test_racing_recoveries_resolve_a_dead_letter_once(store: SyncStore, worker_stores: list[SyncStore]) -> None:
    commit(store, [], [dead_letter("7")])
    (letter,) = store.unresolved_dead_letters(CREDENTIAL)

    def resolve(index: int, worker_store: SyncStore) -> bool:
        return worker_store.resolve_dead_letter(
            letter.id, record(7, "2024-01-01T00:00:00Z", winner=index), run_id="recovery"
        )

    outcomes = run_together(worker_stores, resolve)
    assert outcomes.count(True) == 1
    (row,) = store.get_run_log("recovery")
    assert row.records_recovered == 1
    assert stored_record(store, 7).payload["winner"] == outcomes.index(True)
