"""Where the store's blocking calls run: a bounded set of threads, each busy only while a query runs.

The serving loop (grpc.aio) must never block, and psycopg2 and Peewee do. So
every store call is handed to one of ``threads`` threads (as many as pooled
connections, so a thread never waits for a connection), and the call's
coroutine awaits it holding nothing else: a stream between two pages, or a
call queued behind busy threads, holds no thread and no connection.

The caller's context variables (request id, trace span) go with the call, so
log lines and database spans made in the thread belong to the RPC. A call that
waited longer than the pool timeout for a thread is refused UNAVAILABLE instead
of running late; a call cancelled while queued never runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from memstore_server import metrics
from memstore_server.errors import Unavailable
from memstore_server.stream_memory import StreamMemory

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Blocking:
    """Runs blocking functions off the event loop, at most ``threads`` at a time."""

    def __init__(self, threads: int, queue_timeout: float, stream_memory: StreamMemory) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="db")
        self._queue_timeout = queue_timeout
        # Reads for streams take at most half the threads (see ``bulk``).
        self._bulk_slots = asyncio.Semaphore(max(1, threads // 2))
        self._stream_memory = stream_memory

    async def bulk(self, weigh: Callable[[T], int], holds: int, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` as ``__call__`` runs it, for a read of many rows that a stream
        sends: a page of ListUsersChunked, a window of an export, a page of a snapshot.
        What it returns (``weigh`` tells its bytes) is held by the stream until sent, and
        the stream holds up to ``holds`` such reads at once: both count in the process's
        budget for streams (stream_memory.py).

        At most half the threads run such reads at once; the rest wait here, holding
        nothing, not in the threads' queue. So however many streams start together, a
        point read or a write finds a thread without queueing behind their pages (64
        streams starting at once held GetUser back 0.8 s when they shared one queue)."""

        async def read() -> T:
            async with self._bulk_slots:
                return await self(function, *args)

        return await self._stream_memory.read(read, weigh, holds=holds)

    async def __call__(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` run on a database thread; its result or its exception."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(
            self._executor, context.run, self._run, time.perf_counter(), function, args
        )

    def _run(self, queued_at: float, function: Callable[..., T], args: tuple[Any, ...]) -> T:
        waited = time.perf_counter() - queued_at
        metrics.POOL_WAIT_SECONDS.observe(waited)
        if waited > self._queue_timeout:
            logger.warning("a call waited %.1fs for a database thread; refusing it", waited)
            raise Unavailable(
                "the server is busy: no database connection became free in time; retry with backoff",
                reason="DATABASE_POOL_EXHAUSTED",
            )
        return function(*args)

    def shutdown(self) -> None:
        """Drop queued calls and wait for running ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)
