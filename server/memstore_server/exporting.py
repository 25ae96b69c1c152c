"""One ExportUsers stream: windows of users read ahead in parallel, sent in id order.

Each window is one statement reading stored lines (store/exports.py). So that
the database reads while the server sends, and more than one backend reads at a
time (chosen when the lines were built at read time and one backend bound the
export; with stored lines the export runs at about 1.3 times the stream, not
measured with fewer windows at once), the
stream keeps ``read_ahead`` windows being read at once, each on a connection of
its own held only for its statement, and sends them in order as they arrive: the
stream's order and its cursors are those of a single reader. A window's
statement is asked for only when there is room among those in flight, so a
client that stops reading stops the reads too; when the call ends early, the
reads still running are cancelled with it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from memstore_server import metrics, responses, stream_memory
from memstore_server.blocking import Blocking
from memstore_server.filtering import Condition
from memstore_server.store.exports import WINDOW_SIZES, Lines, UserExports

# Windows read at once by one export, at most: with 4, the database backends kept busy
# outnumber this machine's 2 cores, and more only queue.
MAX_READ_AHEAD = 4
# Users in each window until one has been read: then its bytes a user size the next ones.
FIRST_WINDOW = 250


def window_size(bytes_per_user: float | None, target_bytes: int) -> int:
    """The most users (of WINDOW_SIZES) whose lines come to at most ``target_bytes``, at
    ``bytes_per_user``; FIRST_WINDOW while that is not known yet.

    Large windows make an export fast (4,000 users of 350 bytes went 20% faster than
    1,000: a fifth of the statements and messages); sized by bytes, a window of the
    largest users (100 KB each) is 20 of them, not a string of 400 MB to hold."""
    if bytes_per_user is None:
        return FIRST_WINDOW
    return next((size for size in WINDOW_SIZES if size * bytes_per_user <= target_bytes), 1)


def read_ahead_for(pool_size: int) -> int:
    """Windows read at once by one export: a quarter of the pool (the other calls keep the
    rest), between 1 and MAX_READ_AHEAD."""
    return max(1, min(MAX_READ_AHEAD, pool_size // 4))


class Export:
    """Streams of ExportUsers for one server."""

    def __init__(self, store: UserExports, run: Blocking, *, max_message_bytes: int, read_ahead: int) -> None:
        self._store = store
        self._run = run
        self._max_bytes = max_message_bytes
        self._read_ahead = read_ahead
        # A window's lines come to about half a message: room for users larger than the last.
        self._window_bytes = max_message_bytes // 2

    async def stream(self, cursor: int, where: Condition | None) -> AsyncIterator[bytes]:
        """Every user after ``cursor`` (matching ``where``) as serialized ExportUsersResponses."""
        reading: deque[tuple[int, int, int, asyncio.Future[Lines]]] = deque()
        after, table_ended = cursor, False
        bytes_per_user: float | None = None
        try:
            while True:
                while len(reading) < self._read_ahead and not table_ended:
                    size = window_size(bytes_per_user, self._window_bytes)
                    end = await self._run(self._store.window_end, after, size)
                    if end is None:
                        table_ended = True
                        break
                    lines = asyncio.ensure_future(
                        self._run.bulk(_lines_bytes, self._read_ahead, self._store.lines, after, end, where)
                    )
                    reading.append((after, end, size, lines))
                    after = end
                if not reading:
                    return
                start, end, size, first = reading[0]
                window = await first
                reading.popleft()
                # Per user read, matching or not: a filter's window costs what it reads.
                bytes_per_user = len(window.data) / size
                for message, count in await self._messages(start, end, window, where):
                    yield message
                    metrics.USERS_STREAMED.inc(count)
        finally:
            for *_, unfinished in reading:
                unfinished.cancel()

    async def _messages(
        self, start: int, end: int, lines: Lines, where: Condition | None
    ) -> list[tuple[bytes, int]]:
        """The messages of the window (start, end]: one, or none when nothing in it matched,
        or (when its lines are too large together for one message, which few are) its users
        read again one by one and cut into several; with how many users each holds."""
        if not lines.count:
            return []
        if responses.export_lines_fit(len(lines.data), self._max_bytes):
            return [(responses.exported_lines(lines.data, lines.last_id), lines.count)]
        rows = await self._run.bulk(
            _rows_bytes, self._read_ahead, self._store.lines_by_user, start, end, where
        )
        stream_memory.free(len(lines.data))  # replaced by ``rows``
        return _cut(rows, self._max_bytes)


def _lines_bytes(lines: Lines) -> int:
    return len(lines.data)


def _rows_bytes(rows: list[tuple[int, bytes]]) -> int:
    return sum(len(line) for _, line in rows)


def _cut(rows: list[tuple[int, bytes]], max_bytes: int) -> list[tuple[bytes, int]]:
    """(id, line) rows as messages of at most ``max_bytes``, each with its count of users."""
    messages: list[tuple[bytes, int]] = []
    part: list[bytes] = []
    used = 0
    last_id = 0
    for user_id, line in rows:
        if part and not responses.export_lines_fit(used + len(line), max_bytes):
            messages.append((responses.exported_lines(b"".join(part), last_id), len(part)))
            part, used = [], 0
        part.append(line)
        used += len(line)
        last_id = user_id
    if part:
        messages.append((responses.exported_lines(b"".join(part), last_id), len(part)))
    return messages
