"""The change feed of one process: one reader of ``user_changes`` shared by every watcher.

Watchers at the same position share reads: the feed reads from its head whenever
the LISTEN connection says users changed (wakeups.py), and at least every tick
(a fraction of the heartbeat) so that idle watchers get fresh tokens, and keeps the
last batches it read. A watcher whose position starts one of them takes it from
memory; a watcher elsewhere (resuming from a token, or slow enough to fall out of
the kept batches) reads for itself, up to the feed's last snapshot, where it joins
the others. So an idle server's database load is one read per tick, however many
watchers it has; a waiting watcher holds an asyncio event, no thread and no
connection. With no watcher, the feed does not read at all.

It also prunes: changes older than the retention are deleted in batches, every
so often, by a background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

from memstore_server.blocking import Blocking
from memstore_server.errors import ServiceError, Unavailable
from memstore_server.store.changes import ChangeBatch, ChangeStore, FeedState, Position
from memstore_server.timeouts import timeout
from memstore_server.wakeups import ChangeAnnouncer, ChangeListener

logger = logging.getLogger(__name__)

# Changes per read: about one message's worth.
READ_LIMIT = 1000
# Batches kept for watchers a little behind the head: at most this many, holding at most
# this many bytes of users (a watcher further behind reads for itself).
KEPT_BATCHES = 256
KEPT_BYTES = 64 * 1024 * 1024
# The feed reads at least this often, as a fraction of the heartbeat: a watcher sends an
# empty message when HEARTBEAT_SHARE of it has passed, so one comes within the heartbeat.
TICK_SHARE = 0.4
HEARTBEAT_SHARE = 0.5
PRUNE_BATCH = 5000
# How long a new watcher without a token waits for the feed's first read.
FRESH_HEAD_SECONDS = 10.0
_RETRY_SECONDS = 1.0


def _size(batch: ChangeBatch) -> int:
    return sum(len(change.user) for change in batch.changes)


class ChangeFeed:
    """Reads the feed for every watcher of this process (see the module docstring)."""

    def __init__(
        self, store: ChangeStore, run: Blocking, *, heartbeat: float, retention: float, listen: bool = True
    ) -> None:
        self.store = store
        self.heartbeat = heartbeat
        self._run = run
        self._retention = retention
        self._listener = ChangeListener(store.db, self._wake_up) if listen else None
        # The stores call announcer.committed after each change to users (wakeups.py).
        self.announcer = ChangeAnnouncer(store.db)
        self._feed_id_read: asyncio.Future[FeedState] | None = None
        self._head: Position | None = None
        self._kept: deque[ChangeBatch] = deque()
        self._kept_bytes = 0
        self._by_start: dict[Position, ChangeBatch] = {}
        self._watchers = 0
        self._started_reads = 0
        self._finished_reads = 0
        self._wake: asyncio.Event | None = None
        self._watched: asyncio.Event | None = None
        self._published: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    def _events(self) -> tuple[asyncio.Event, asyncio.Event, asyncio.Event]:
        if self._wake is None or self._watched is None or self._published is None:
            self._wake, self._watched, self._published = asyncio.Event(), asyncio.Event(), asyncio.Event()
        return self._wake, self._watched, self._published

    def start(self) -> None:
        """Start the reader (idle until a watcher comes) and the pruner; on the serving loop."""
        if self._tasks:
            return
        self._events()
        self._tasks = [
            asyncio.ensure_future(self._read_forever()),
            asyncio.ensure_future(self._prune_forever()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._listener is not None:
            await self._listener.stop()
        await self.announcer.close()

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ for watchers

    async def feed_id(self) -> str:
        """The feed's identity (it never changes), read once however many watchers ask at once."""
        if self._feed_id_read is None:
            self._feed_id_read = asyncio.ensure_future(self._run(self.store.state))
        try:
            return (await asyncio.shield(self._feed_id_read)).feed_id
        except Exception:
            self._feed_id_read = None  # read again next time
            raise

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Counts a watcher for its lifetime: the feed reads only while it has some."""
        self.start()
        _, watched, _ = self._events()
        if self._listener is not None:
            self._listener.start()
        self._watchers += 1
        watched.set()
        try:
            yield
        finally:
            self._watchers -= 1

    async def fresh_head(self) -> Position:
        """The head after a read that started after this call: a position taken now, shared.
        UNAVAILABLE when the feed cannot read for FRESH_HEAD_SECONDS (the database is down)."""
        wake, _, _ = self._events()
        wanted = self._started_reads + 1
        deadline = asyncio.get_running_loop().time() + FRESH_HEAD_SECONDS
        while self._finished_reads < wanted or self._head is None:
            wake.set()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                async with timeout(max(remaining, 0)):
                    await self.published()
            except asyncio.TimeoutError:
                raise Unavailable(
                    "the change feed cannot read the database now; retry with backoff",
                    reason="DATABASE_UNAVAILABLE",
                ) from None
        return self._head

    async def published(self) -> None:
        """Returns when the feed has read again (with or without changes)."""
        _, _, published = self._events()
        await published.wait()

    def kept_batch(self, start: Position) -> ChangeBatch | None:
        """The kept batch read from ``start``, if any."""
        return self._by_start.get(start)

    def is_head(self, position: Position) -> bool:
        return position == self._head

    async def read_for(self, position: Position) -> ChangeBatch:
        """A read of a watcher not at a kept position, towards the feed's head so that it
        can join the others there: the rest of its window, else up to the head's snapshot
        when the head is later, else up to now."""
        head = self._head
        joinable = position.window is None and head is not None and head.window is None
        if (
            joinable
            and head is not None
            and head.seen != position.seen
            and head.seen.not_before(position.seen)
        ):
            position = Position(position.seen, head.seen, 0)
        return await self._run(self.store.read, position, READ_LIMIT)

    # ------------------------------------------------------------------ the reader

    async def _read_forever(self) -> None:
        wake, watched, _ = self._events()
        while True:
            if self._watchers == 0:
                self._forget()
                watched.clear()
                await watched.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                async with timeout(self.heartbeat * TICK_SHARE):
                    await wake.wait()
            wake.clear()
            self._started_reads += 1
            started = self._started_reads
            try:
                if self._head is None:
                    self._head = Position((await self._run(self.store.state)).now)
                batch = await self._run(self.store.read, self._head, READ_LIMIT)
            except ServiceError as error:
                logger.warning("change feed: read failed (%s); retrying", error.message)
                if error.reason == "RESUME_TOKEN_EXPIRED":
                    self._forget()
                await asyncio.sleep(_RETRY_SECONDS)
                wake.set()
                continue
            except Exception:
                logger.exception("change feed: read failed; retrying")
                await asyncio.sleep(_RETRY_SECONDS)
                wake.set()
                continue
            self._keep(batch)
            self._finished_reads = started
            if batch.end.window is not None:  # more of this window: read on at once
                wake.set()
            self._publish()

    def _keep(self, batch: ChangeBatch) -> None:
        if batch.end == batch.start:  # nothing committed since: the head stays
            return
        self._kept.append(batch)
        self._kept_bytes += _size(batch)
        self._by_start[batch.start] = batch
        while len(self._kept) > KEPT_BATCHES or (self._kept_bytes > KEPT_BYTES and len(self._kept) > 1):
            dropped = self._kept.popleft()
            self._kept_bytes -= _size(dropped)
            if self._by_start.get(dropped.start) is dropped:
                del self._by_start[dropped.start]
        self._head = batch.end

    def _forget(self) -> None:
        """Without watchers the head would only grow old: start afresh when one comes."""
        self._head = None
        self._kept.clear()
        self._kept_bytes = 0
        self._by_start.clear()

    def _publish(self) -> None:
        _, _, published = self._events()
        self._published = asyncio.Event()
        published.set()

    # ------------------------------------------------------------------ pruning

    async def _prune_forever(self) -> None:
        interval = min(60.0, max(1.0, self._retention / 4))
        while True:
            try:
                deleted = await self._run(self.store.prune, self._retention, PRUNE_BATCH)
                if deleted:
                    logger.info("change feed: pruned %d changes older than %gs", deleted, self._retention)
            except Exception as error:
                logger.warning("change feed: pruning failed (%s)", error)
            await asyncio.sleep(interval)
