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

The hand-off of the GIL: a page's body arrives in many socket reads, and after each one the
fetching thread needs the GIL back while the consumer computes (validation, the upsert's
parameters). Under CPython's default switch interval (5 ms) each of those waits may last that long,
which left the sync ~15% behind a bare fetch loop at 50 ms of latency (``make bench``, group
``sync``). While any prefetch runs, the process's switch interval is at most
:data:`PREFETCH_SWITCH_INTERVAL`; the last one to end restores what was set before.
"""

from __future__ import annotations

import contextvars
import queue
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["PREFETCH_SWITCH_INTERVAL", "prefetched"]

T = TypeVar("T")

#: Seconds a thread may hold the GIL while another waits for it, during a prefetch (CPython's default: 0.005).
PREFETCH_SWITCH_INTERVAL = 0.0005


class _SwitchInterval:
    """The process-wide switch interval, shortened while at least one prefetch runs, then restored."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._users = 0
        self._before = 0.0

    @contextmanager
    def shortened(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(min(self._before, self._interval))
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    sys.setswitchinterval(self._before)


_switch_interval = _SwitchInterval(PREFETCH_SWITCH_INTERVAL)


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

    def handed_over() -> Iterator[T]:
        while True:
            item = handoff.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item.value

    with _switch_interval.shortened():
        fetcher.start()
        try:
            yield handed_over()
        finally:
            _stop(fetcher, handoff, stop)


def _stop(fetcher: threading.Thread, handoff: queue.Queue[Any], stop: threading.Event) -> None:
    """Tell the fetching thread to stop and wait until it has ended."""
    stop.set()
    # Free the slot the fetcher may be blocked on; it sees ``stop`` after that put and ends.
    while fetcher.is_alive():
        try:
            handoff.get(timeout=0.05)
        except queue.Empty:
            continue
    fetcher.join()
