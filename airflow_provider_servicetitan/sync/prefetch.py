"""Fetch the next page while the current one is stored: a bounded hand-off between two threads.

A sync spends its time in two places that do not need each other: waiting for ServiceTitan to
answer, and writing a page to the warehouse. :func:`prefetched` runs the page iterator in a thread
of its own that hands pages over one at a time, so page N+1 is on the wire while page N commits.
At most three pages exist at once (one being fetched, one handed over, one being stored): memory
stays flat whatever the size of the export. The consumer still commits each page together with
its checkpoint, in order, so a failure leaves the checkpoint at the last page stored.

The fetching thread runs in a copy of the caller's context (:mod:`contextvars`), so what the
caller set there (e.g. which resource the retries it counts belong to) holds in it too. An error
of the iterator reaches the consumer after the pages fetched before it. When the consumer stops
early (its own error, or it breaks out), the fetching thread is told to stop, and the iterator is
closed in the thread that ran it before :func:`prefetched` returns: nothing keeps calling
ServiceTitan behind the caller's back.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Item(Generic[T]):
    value: T


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class _End:
    """The iterator is exhausted."""


@contextmanager
def prefetched(pages: Iterator[T], *, name: str) -> Iterator[Iterator[T]]:
    """Iterate ``pages`` one page ahead of the consumer, in a thread called ``name``.

    Use it as ``with prefetched(pages, name=...) as ahead: for page in ahead: ...``.
    """
    # One slot: the fetcher may hold one finished page while the consumer works on the previous one.
    handoff: queue.Queue[_Item[T] | _Failed | _End] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def fetch() -> None:
        try:
            for page in pages:
                handoff.put(_Item(page))
                if stop.is_set():
                    return
            handoff.put(_End())
        except BaseException as error:  # handed to the consumer, who raises it
            handoff.put(_Failed(error))
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    context = contextvars.copy_context()
    fetcher = threading.Thread(target=context.run, args=(fetch,), name=name, daemon=True)
    fetcher.start()

    def handed_over() -> Iterator[T]:
        while True:
            item = handoff.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item.value

    try:
        yield handed_over()
    finally:
        stop.set()
        # Free the slot the fetcher may be blocked on; it sees ``stop`` after that put and ends.
        while fetcher.is_alive():
            try:
                handoff.get(timeout=0.05)
            except queue.Empty:
                continue
        fetcher.join()
