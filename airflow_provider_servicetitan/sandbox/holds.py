"""Requests held unanswered: by the ``hold_after_pages`` knob until the faults change, or by the
timeout fault for ``timeout_hold`` seconds.

A test uses them to stop a client at a known point (e.g. to kill it there): it waits, through
:meth:`HeldRequests.wait_until`, until the client's request is held, so nothing depends on how fast
the client runs. Everything runs on the server's event loop, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any


class HeldRequests:
    """How many requests are held now, and the signal that makes them look again."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = asyncio.Event()

    @property
    def count(self) -> int:
        """Requests held now."""
        return self._count

    def changed(self) -> None:
        """Something changed (the faults, the number held): every waiter looks again."""
        self._changed.set()
        self._changed = asyncio.Event()

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        """Count a request as held for the duration of the block."""
        self._count += 1
        self.changed()
        try:
            yield
        finally:
            self._count -= 1
            self.changed()

    async def hold(
        self,
        still_held: Callable[[], bool],
        client_gone: Coroutine[Any, Any, None],
        stopping: asyncio.Event,
    ) -> bool:
        """Keep a request waiting while ``still_held()``, checked again at every change.

        :param client_gone: finishes when the client has left.
        :returns: ``True`` to serve the request now; ``False`` if the client left or the server is
            stopping first.
        """
        leaving = {asyncio.ensure_future(client_gone), asyncio.ensure_future(stopping.wait())}
        try:
            with self.counted():
                while still_held():
                    change = asyncio.ensure_future(self._changed.wait())
                    done, _ = await asyncio.wait({change, *leaving}, return_when=asyncio.FIRST_COMPLETED)
                    if done & leaving:
                        change.cancel()
                        return False
                return True
        finally:
            for waiter in leaving:
                waiter.cancel()

    async def wait_until(self, count: int, timeout: float) -> bool:
        """Wait until exactly ``count`` requests are held; ``False`` if not within ``timeout`` seconds."""

        async def reached() -> None:
            while self._count != count:
                await self._changed.wait()

        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            return False
        return True
