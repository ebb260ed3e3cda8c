"""The page hand-off between the fetching thread and the committing one (no sleeps: events only)."""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Iterator

import pytest

from airflow_provider_servicetitan.sync.prefetch import PREFETCH_SWITCH_INTERVAL, prefetched

_CURRENT = contextvars.ContextVar("current", default="unset")


class Pages:
    """A page iterator that records which pages were asked for, and in which thread it closed."""

    def __init__(self, count: int, *, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.fetched: list[int] = []
        self.closed_in: str | None = None
        self.contexts: list[str] = []
        self.fetched_event = threading.Condition()

    def __iter__(self) -> Iterator[int]:
        return self.generate()

    def generate(self) -> Iterator[int]:
        try:
            for page in range(self.count):
                if page == self.fail_at:
                    raise ConnectionError(f"page {page} failed")
                self.contexts.append(_CURRENT.get())
                with self.fetched_event:
                    self.fetched.append(page)
                    self.fetched_event.notify_all()
                yield page
        finally:
            self.closed_in = threading.current_thread().name

    def wait_fetched(self, count: int) -> None:
        with self.fetched_event:
            assert self.fetched_event.wait_for(lambda: len(self.fetched) >= count, timeout=30)


def test_every_page_arrives_in_order_from_another_thread_in_the_callers_context() -> None:
    pages = Pages(5)
    _CURRENT.set("customers")

    with prefetched(iter(pages), name="fetch-test") as ahead:
        received = list(ahead)

    assert received == [0, 1, 2, 3, 4]
    assert pages.contexts == ["customers"] * 5
    assert pages.closed_in == "fetch-test"


def test_the_next_page_is_fetched_while_the_consumer_holds_the_current_one() -> None:
    pages = Pages(10)

    with prefetched(iter(pages), name="fetch-ahead") as ahead:
        first = next(ahead)
        # While page 0 is being "committed", page 1 is fetched and page 2 too (it waits for the slot).
        pages.wait_fetched(3)
        assert first == 0
        assert pages.fetched == [0, 1, 2]
        rest = list(ahead)

    assert rest == list(range(1, 10))


def test_an_error_reaches_the_consumer_after_the_pages_fetched_before_it() -> None:
    pages = Pages(5, fail_at=3)
    received: list[int] = []

    def commit_all() -> None:
        with prefetched(iter(pages), name="fetch-fail") as ahead:
            received.extend(ahead)

    with pytest.raises(ConnectionError, match="page 3 failed"):
        commit_all()

    assert received == [0, 1, 2]
    assert pages.closed_in == "fetch-fail"


def test_a_consumer_that_stops_early_stops_the_fetching_and_closes_the_pages_in_their_thread() -> None:
    pages = Pages(1000)

    def fail_on_the_second_page() -> None:
        with prefetched(iter(pages), name="fetch-stop") as ahead:
            for page in ahead:
                if page == 1:
                    raise RuntimeError("commit failed")

    with pytest.raises(RuntimeError, match="commit failed"):
        fail_on_the_second_page()

    # Nothing runs behind the caller's back: the thread ended and closed the iterator, a page or
    # two ahead of the consumer at most.
    assert pages.closed_in == "fetch-stop"
    assert len(pages.fetched) <= 4
    assert not any(thread.name == "fetch-stop" for thread in threading.enumerate())


@pytest.fixture
def switch_interval() -> Iterator[float]:
    """The process's switch interval before the test, restored after it whatever happened."""
    before = sys.getswitchinterval()
    yield before
    sys.setswitchinterval(before)


def test_the_switch_interval_is_short_while_any_prefetch_runs_and_restored_after_the_last(
    switch_interval: float,
) -> None:
    sys.setswitchinterval(0.005)
    first, second = Pages(3), Pages(3)

    with prefetched(iter(first), name="fetch-first") as one:
        assert sys.getswitchinterval() == pytest.approx(PREFETCH_SWITCH_INTERVAL)
        with prefetched(iter(second), name="fetch-second") as two:
            assert list(two) == [0, 1, 2]
        # The second one ended, the first still runs: still short.
        assert sys.getswitchinterval() == pytest.approx(PREFETCH_SWITCH_INTERVAL)
        assert list(one) == [0, 1, 2]

    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_shorter_switch_interval_set_by_the_process_is_kept(switch_interval: float) -> None:
    sys.setswitchinterval(PREFETCH_SWITCH_INTERVAL / 2)

    with prefetched(iter(Pages(2)), name="fetch-shorter") as ahead:
        assert sys.getswitchinterval() == pytest.approx(PREFETCH_SWITCH_INTERVAL / 2)
        assert list(ahead) == [0, 1]

    assert sys.getswitchinterval() == pytest.approx(PREFETCH_SWITCH_INTERVAL / 2)


def test_the_switch_interval_is_restored_when_the_consumer_fails(switch_interval: float) -> None:
    sys.setswitchinterval(0.005)

    def fail_on_the_first_page() -> None:
        with prefetched(iter(Pages(5)), name="fetch-fails") as ahead:
            next(ahead)
            raise RuntimeError("commit failed")

    with pytest.raises(RuntimeError, match="commit failed"):
        fail_on_the_first_page()

    assert sys.getswitchinterval() == pytest.approx(0.005)
