"""Connection-level tricks for faults no HTTP answer can express: resets, truncation, holding on.

They reach the TCP transport through uvicorn's ``receive`` callable, a bound method of its
``RequestResponseCycle`` that carries the ``transport``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from typing import Any

from starlette.types import Message, Receive


def _transport(receive: Receive) -> Any:
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("connection faults need the sandbox to run on uvicorn")
    return transport


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone (the request body, if any, is drained on the way)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def reset_connection(receive: Receive) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0 then abort): the client sees a reset."""
    transport = _transport(receive)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await wait_for_disconnect(receive)


async def close_connection(receive: Receive) -> None:
    """Flush what was written and close the connection, whatever the answer still owes."""
    _transport(receive).close()
    await wait_for_disconnect(receive)


async def hold(receive: Receive, seconds: float, release: asyncio.Event) -> bool:
    """Keep the request waiting up to ``seconds``.

    :returns: ``True`` if it ended early: the client gave up, or ``release`` was set (the server
        is stopping); ``False`` if it was held for the whole time.
    """
    waiters = {asyncio.ensure_future(wait_for_disconnect(receive)), asyncio.ensure_future(release.wait())}
    done, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiter in pending:
        waiter.cancel()
    return bool(done)


class KeptRequest:
    """A request's ``receive`` that can listen for the client leaving without losing the request.

    Hearing of a disconnect means reading the request's messages; :meth:`until_disconnect` keeps
    them, and :meth:`receive` hands them to the app first, so a request held for a while is then
    served as if nothing had been read. Connection tricks reach the transport through it too.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._kept: deque[Message] = deque()
        self.transport = _transport(receive)

    async def until_disconnect(self) -> None:
        """Return once the client has gone, keeping every other message for the app."""
        while (message := await self._receive())["type"] != "http.disconnect":
            self._kept.append(message)

    async def receive(self) -> Message:
        """The ``receive`` to pass on: the kept messages first, then the connection's."""
        if self._kept:
            return self._kept.popleft()
        return await self._receive()
