"""One LISTEN connection per process: tells the change feed that users changed.

Servers send ``NOTIFY memstore_user_changes`` after their changes to users commit
(ChangeAnnouncer). One psycopg2
connection per process listens, its socket watched by the event loop (``add_reader``),
so waiting costs no thread and no pooled connection, and each notification is one
callback however many watchers there are. A lost connection is reopened with
backoff, and the feed is told to read then too (notifications may have been missed
meanwhile); the feed also reads at every heartbeat tick, so a silent connection
delays changes by at most that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import peewee

from memstore_server.database import own_connection

logger = logging.getLogger(__name__)

CHANNEL = "memstore_user_changes"
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 10.0


class ChangeListener:
    """Calls ``on_change`` (on the event loop) when changes to users may have committed."""

    def __init__(self, db: peewee.Database, on_change: Callable[[], None]) -> None:
        self._db = db
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _connect(self) -> Any:
        conn = own_connection(self._db)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        return conn

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            try:
                conn = await asyncio.to_thread(self._connect)
            except Exception as error:
                logger.warning("change feed: cannot LISTEN (%s); retrying in %gs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = _FIRST_BACKOFF
            await self._listen(conn)
            await asyncio.sleep(backoff)

    async def _listen(self, conn: Any) -> None:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[BaseException] = loop.create_future()

        def readable() -> None:
            try:
                conn.poll()
            except Exception as error:
                if not lost.done():
                    lost.set_result(error)
                return
            if conn.notifies:
                conn.notifies.clear()
                self._on_change()

        fd = conn.fileno()
        loop.add_reader(fd, readable)
        self.listening = True
        self._on_change()  # changes may have committed while nobody listened
        try:
            error = await lost
            logger.warning("change feed: the LISTEN connection was lost (%s); reconnecting", error)
        finally:
            self.listening = False
            loop.remove_reader(fd)
            conn.close()


class ChangeAnnouncer:
    """Sends ``NOTIFY memstore_user_changes`` after this process's changes to users commit.

    Sent after the commit by the server, not by a trigger inside the writing transaction:
    PostgreSQL holds one lock for the whole database server from the commit of a
    transaction that notifies until its end, WAL flush included, so notifying writes
    committed one at a time and never shared a flush, and CreateUser ran at half its
    speed. Here one NOTIFY at a time is in flight per process, followed by one more if
    changes committed while it was on its way: a burst of writes costs two, and every
    change is followed by a NOTIFY sent after it committed. Changes made by anything but
    a memstore server reach watchers at the feed's next tick.

    ``committed`` may be called from any thread; the sending runs on the event loop that
    built the announcer (none: nothing is sent, and watchers learn at the tick).
    """

    def __init__(self, db: peewee.Database) -> None:
        self._db = db
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._sending: asyncio.Task[None] | None = None
        self._again = False
        self._conn: Any = None

    def committed(self) -> None:
        """Changes to users have committed: make sure a NOTIFY follows."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._announce)
        except RuntimeError:  # the loop closed meanwhile: the server is gone
            return

    async def close(self) -> None:
        if self._sending is not None:
            await asyncio.gather(self._sending, return_exceptions=True)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    def _announce(self) -> None:
        if self._sending is not None:
            self._again = True
            return
        self._sending = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await asyncio.to_thread(self._notify)
                except Exception as error:  # the watchers' tick still brings the changes
                    logger.warning("change feed: cannot NOTIFY (%s); watchers learn at the next tick", error)
                    return
                if not self._again:
                    return
        finally:
            self._sending = None

    def _notify(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = own_connection(self._db)
            self._conn.autocommit = True
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(f"NOTIFY {CHANNEL}")
        except Exception:
            conn, self._conn = self._conn, None
            conn.close()  # a new one next time
            raise
