"""Point reads that arrive together are answered by one query.

Under load, most of a GetUser's cost is not PostgreSQL's work but handing the
call to a database thread and back. So reads of single keys queue here, and
while a query is running, the keys that arrive meanwhile wait for the next
one, which then fetches all of them at once (``WHERE user_id = ANY(...)``).
A lone read is sent at once, as before; a busy server makes far fewer, larger
queries. Every read still sees every write committed before it arrived: its
query starts after it was queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

# Keys per query: past a few hundred, the query's own cost grows and nothing is saved.
MAX_BATCH = 256
# Queries running at once: one, so that the keys arriving meanwhile form the next batch.
MAX_IN_FLIGHT = 1

FetchMany = Callable[[Sequence[str]], Awaitable[dict[str, bytes]]]


class PointReads:
    """Coalesces concurrent ``get(key)`` calls into ``fetch_many(keys)`` calls."""

    def __init__(self, fetch_many: FetchMany) -> None:
        self._fetch_many = fetch_many
        self._waiting: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._in_flight = 0

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when there is none."""
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._in_flight < MAX_IN_FLIGHT:
            self._launch()
        return await future

    def _launch(self) -> None:
        keys = list(self._waiting)[:MAX_BATCH]
        batch = {key: self._waiting.pop(key) for key in keys}
        self._in_flight += 1
        task = asyncio.ensure_future(self._fetch_many(keys))
        task.add_done_callback(lambda done: self._deliver(batch, done))

    def _deliver(
        self, batch: dict[str, list[asyncio.Future[bytes | None]]], done: asyncio.Future[dict[str, bytes]]
    ) -> None:
        self._in_flight -= 1
        cancelled = done.cancelled()
        error = None if cancelled else done.exception()
        values = {} if cancelled or error is not None else done.result()
        for key, futures in batch.items():
            for future in futures:
                if future.done():  # its caller gave up (cancelled, deadline)
                    continue
                if cancelled:
                    future.cancel()
                elif error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(values.get(key))
        if self._waiting and self._in_flight < MAX_IN_FLIGHT:
            self._launch()
