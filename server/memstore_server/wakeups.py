"""One LISTEN connection per process: tells the change feed that users changed.

Triggers send ``NOTIFY memstore_user_changes`` as a change commits. One psycopg2
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
