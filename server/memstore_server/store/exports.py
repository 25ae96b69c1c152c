"""Users as JSON Lines, stored by PostgreSQL beside each user: the reads of ExportUsers.

Turning a user into JSON costs a Python process about 9 µs (most of it the
metadata Struct), more than twice what streaming its stored bytes costs in all.
So each user's line is kept with it, in ``json_line``: a column PostgreSQL
generates on every write (migration m0011, which also says what a line holds). A
read joins a window of users' lines into one value: no Python touches a user on
its way.

Windows are cut by counting ids (``window_end``), so a window holds the number
of users asked for however sparse the ids are, and several windows can be read
at once, each on its own connection (exporting.py, which sizes them by bytes).

Each line holds the fields of the User message, with its JSON names, in its
order; no line holds a raw newline: JSON escapes them inside strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peewee
import psycopg2.extensions
from peewee import __exception_wrapper__ as as_peewee_errors  # type: ignore[attr-defined]

from memstore_server.database import connection
from memstore_server.filtering import Condition
from memstore_server.replica import Reads
from memstore_server.store.prepared import Prepared

# The users a window may hold: one statement's work. exporting.py takes the largest whose lines
# come to about its bytes per window (4,000 users of about 350 bytes, 20 of 100 KB).
WINDOW_SIZES = (4000, 2000, 1000, 500, 250, 120, 60, 30, 15, 8, 4, 2, 1)


# The line, as stored.
LINE = "json_line"
# A window's lines, prepared.
_WINDOW = Prepared(
    "memstore_export_window",
    ("bigint", "bigint"),
    f"SELECT count(*), max(id), string_agg({LINE}, '' ORDER BY id) FROM users WHERE id > $1 AND id <= $2",
)
# Where a filter's condition goes in the queries below.
_CONDITION = "/* condition */"
# The same, of the users matching a filter.
_FILTERED_WINDOW = _WINDOW.text + f" AND ({_CONDITION}) IS TRUE"
# A window's users one row each: for a window whose lines do not fit one message.
_WINDOW_ROWS = (
    f"SELECT id, {LINE} FROM users WHERE id > %s AND id <= %s AND ({_CONDITION}) IS TRUE ORDER BY id"
)
# The id that ends the window of ``size`` users after a cursor: the size-th id after it, or the
# last id when fewer are left (NULL: none), read from the primary key alone (about 0.3 ms a
# thousand). The offset is written in, not a parameter: a generic plan for an unknown offset
# may sort the table instead of walking the primary key; so there is one statement per size.
_WINDOW_ENDS = {
    size: Prepared(
        f"memstore_export_window_end_{size}",
        ("bigint", "bigint"),  # the cursor twice: unprepared, each placeholder takes one
        f"SELECT coalesce((SELECT id FROM users WHERE id > $1 ORDER BY id OFFSET {size - 1} LIMIT 1), "
        "(SELECT max(id) FROM users WHERE id > $2))",
    )
    for size in WINDOW_SIZES
}


@dataclass(frozen=True)
class Lines:
    """The JSON lines of the users of one window (matching the filter, if any)."""

    data: bytes
    count: int
    # The id of the last user in ``data``; the window's start when it is empty.
    last_id: int


class UserExports:
    """The reads of an export (see the module docstring); every method blocks."""

    def __init__(self, reads: Reads) -> None:
        self._reads = reads

    def window_end(self, after: int, size: int) -> int | None:
        """The last id of the window after the id ``after`` that holds the next ``size`` users
        (one of WINDOW_SIZES; fewer at the end of the table); None when no user comes after."""

        def read(source: peewee.Database) -> int | None:
            with connection(source) as db:
                (end,) = _WINDOW_ENDS[size].execute(db, (after, after)).fetchone()
            return None if end is None else int(end)

        return self._reads.run(read)

    def lines(self, after: int, through: int, where: Condition | None) -> Lines:
        """The lines of the users with ids in (after, through] (matching ``where``), in id order."""

        def read(source: peewee.Database) -> Lines:
            with connection(source) as db:
                cursor = _bytes_cursor(db)
                if where is None:
                    _WINDOW.execute(db, (after, through), cursor)
                else:
                    query = _FILTERED_WINDOW.replace(_CONDITION, where.sql)
                    with as_peewee_errors:
                        cursor.execute(query, (after, through, *where.params))
                count, last_id, data = cursor.fetchone()
            return Lines(data or b"", count, last_id or after)

        return self._reads.run(read)

    def lines_by_user(self, after: int, through: int, where: Condition | None) -> list[tuple[int, bytes]]:
        """The same lines one by one, with their users' ids: (id, line) in id order."""
        condition = "true" if where is None else where.sql
        params = () if where is None else where.params

        def read(source: peewee.Database) -> list[tuple[int, bytes]]:
            with connection(source) as db:
                cursor = _bytes_cursor(db)
                with as_peewee_errors:
                    cursor.execute(_WINDOW_ROWS.replace(_CONDITION, condition), (after, through, *params))
                return [(int(user_id), line) for user_id, line in cursor.fetchall()]

        return self._reads.run(read)


def _bytes_cursor(db: peewee.Database) -> Any:
    """A cursor on ``db``'s connection that fetches text as the UTF-8 bytes PostgreSQL sent:
    lines go out as they came in, not decoded into str and encoded back."""
    cursor = db.cursor()
    psycopg2.extensions.register_type(psycopg2.extensions.BYTES, cursor)
    return cursor
