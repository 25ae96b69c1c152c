"""The memory response streams hold, within one budget per process.

What a stream reads for its client (a page of ListUsersChunked, an export's
windows, a page of a WatchUsers snapshot) is held from the read until gRPC has
taken the message made of it. A client that stops reading keeps that message
in gRPC's buffers and the read ahead behind it: with nothing but the stream
limits, 300 such clients took a server from 70 MB to about 4 GB. So what
streams hold is counted in one sum per process, and a new stream waits, holding
nothing, before its first read until that sum is below ``--stream-memory``.
Unary calls never wait here.

From its first read on, a stream is counted at its reservation (that read's
size times the reads it may hold at once: ListUsersChunked the page being
written and the one read ahead, an export its windows read ahead, a snapshot
one page) or at what it holds, whichever is more, until it ends. So a stream
that has been let in never waits again: made to wait for room that others must
free while holding a page, streams could all wait on each other for good; and a
stream that stalls is counted at what it will hold at most, so the next stream is
let in only if that fits. A stream stalled on its client ends, and frees its
part, at ``--stream-stall-timeout``. Until its first read is counted, a stream
let in takes one of ``admissions`` places, so a burst of streams starting
together is let in a few at a time, not all before any has read: the sum passes
the budget by at most those few reservations, and by what streams let in grow
beyond theirs when their later pages are larger than their first (pages are
counted by users, not bytes; that growth is counted, so no stream is let in
until it is freed).

The count is of the data once; the process holds more than that (the response
a page is copied into, gRPC's own copy of a message being written).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from memstore_server import metrics

T = TypeVar("T")


@dataclass
class _Holding:
    """What one stream holds (bytes read and not yet taken by gRPC) and is reading."""

    memory: StreamMemory
    nbytes: int = 0
    # What it is counted at, at least, once it has read: its reservation.
    reserved: int = 0
    reading: int = 0
    # Its reads decide one at a time whether the stream must wait to be let in.
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def counted(self) -> int:
        return max(self.nbytes, self.reserved)


_HOLDING: contextvars.ContextVar[_Holding | None] = contextvars.ContextVar("stream_holding", default=None)


class StreamMemory:
    """The bytes that the response streams of one process hold, and the budget they wait on."""

    def __init__(self, budget_bytes: int, admissions: int) -> None:
        self.budget_bytes = budget_bytes
        self.held = 0
        self._admissions = asyncio.Semaphore(admissions)
        self._room = asyncio.Event()
        self._room.set()

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """Counts what the stream running inside holds, and frees it all when it ends."""
        holding = _Holding(self)
        token = _HOLDING.set(holding)
        try:
            yield
        finally:
            _HOLDING.reset(token)
            self._count(holding, -holding.nbytes, reserve=0)

    async def read(self, read: Callable[[], Awaitable[T]], weigh: Callable[[T], int], *, holds: int) -> T:
        """``read()``, once there is room if the stream has not been let in yet. What it returns
        (``weigh`` tells its bytes) is held by the stream until ``free``; the stream may hold
        ``holds`` reads of that size at once."""
        holding = _HOLDING.get()
        if holding is None:  # not inside a stream: nothing to hold it to
            return await read()
        async with holding.turn:
            let_in = not holding.counted and not holding.reading
            if let_in:
                await self._admissions.acquire()
                try:
                    await self._wait_for_room()
                except BaseException:
                    self._admissions.release()
                    raise
            holding.reading += 1
        try:
            result = await read()
        finally:
            holding.reading -= 1
            if let_in:
                self._admissions.release()
        nbytes = weigh(result)
        self._count(holding, nbytes, reserve=max(holding.reserved, nbytes * holds))
        return result

    async def _wait_for_room(self) -> None:
        if self.held < self.budget_bytes:
            return
        metrics.STREAM_MEMORY_WAITS.inc()
        while self.held >= self.budget_bytes:
            await self._room.wait()

    def _count(self, holding: _Holding, nbytes: int, *, reserve: int) -> None:
        """Add ``nbytes`` to what ``holding`` holds, set its reservation, and count the change."""
        before = holding.counted
        holding.nbytes += nbytes
        holding.reserved = reserve
        change = holding.counted - before
        if not change:
            return
        self.held += change
        metrics.STREAM_HELD_BYTES.inc(change)
        if self.held < self.budget_bytes:
            self._room.set()
        else:
            self._room.clear()


def free(nbytes: int) -> None:
    """The current stream no longer holds ``nbytes``: gRPC took a message of that size, or
    what was read is dropped (a page read again user by user). More than it holds frees all."""
    holding = _HOLDING.get()
    if holding is not None:
        holding.memory._count(holding, -min(nbytes, holding.nbytes), reserve=holding.reserved)
