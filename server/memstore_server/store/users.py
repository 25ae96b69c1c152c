"""Users: their queries and transactions.

Reads return the users' stored serialized messages (see user_messages.py) as bytes
and run SQL built once at import; responses are framed around them elsewhere
(responses.py). A write stores the user's fresh bytes with its columns, in the same
statement (user_writes.py; a batch, in the same transaction). Every method blocks: the
server runs them on database threads.
Listings and streams run through ``reads`` (the read replica when there is one and
it keeps up); GetUser and every write use the primary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import peewee
from memstore.v1 import sessions_pb2

from memstore_server.database import connection
from memstore_server.errors import AlreadyExists, user_not_found
from memstore_server.filtering import Condition
from memstore_server.models import User
from memstore_server.replica import Reads
from memstore_server.store import binary_copy, id_ranges, user_messages, user_writes
from memstore_server.store.errors import violated_constraint
from memstore_server.store.pages import Page, split_page
from memstore_server.store.prepared import Prepared
from memstore_server.store.rows import SESSION_COLUMNS, fill_session
from memstore_server.validation import Metadata, check_merged_metadata

_GET_MESSAGES = Prepared(
    "memstore_get_users",
    ("text[]",),
    "SELECT id, message, user_id FROM users WHERE user_id = ANY($1)",
)
_LIST_MESSAGES = Prepared(
    "memstore_list_users",
    ("bigint", "bigint"),
    "SELECT id, message FROM users WHERE id > $1 ORDER BY id LIMIT $2",
)
_LIST_MESSAGES_THROUGH = Prepared(
    "memstore_list_users_through",
    ("bigint", "bigint"),
    "SELECT id, message FROM users WHERE id > $1 AND id <= $2 ORDER BY id",
)
# A page of users as one value: per user, a field's tag, the length of its stored
# bytes as a varint (a generated column: migrations/m0006_message_length_varint.py),
# and the bytes. Read through binary COPY, so the value is not hex-encoded on its
# way (binary_copy.py).
_FRAMED_PAGE_OF = (
    "SELECT count(*), max(id), bool_and(message IS NOT NULL), "
    "string_agg(%s || message_length_varint || message, ''::bytea ORDER BY id) "
    "FROM (SELECT id, message, message_length_varint FROM users WHERE id > %s{} ORDER BY id LIMIT %s) AS page"
)
_FRAMED_PAGE = _FRAMED_PAGE_OF.format("")
_FRAMED_PAGE_COLUMNS = (binary_copy.int8, binary_copy.int8, binary_copy.boolean, binary_copy.bytea)
# One round trip: no row when the user does not exist, one all-NULL row when it
# has no session (after the cursor), else one row per session of the page.
_USER_SESSIONS = f"""
SELECT page.* FROM users
LEFT JOIN LATERAL (
    SELECT {SESSION_COLUMNS} FROM sessions
    WHERE sessions.user_id = users.user_id AND sessions.id > %s
    ORDER BY sessions.id LIMIT %s
) AS page ON true
WHERE users.user_id = %s
"""
# Filtered listings: the filter's condition (parameterised) goes where {} stands.
_FILTERED_PAGE = "SELECT id, message FROM users WHERE id > %s AND {} ORDER BY id LIMIT %s"
# Bounded by the ids of a page already found: walked by the primary key, never the whole GIN index.
_FILTERED_THROUGH = "SELECT id, message FROM users WHERE id > %s AND id <= %s AND ({}) IS TRUE ORDER BY id"
_COUNT = "SELECT count(*) FROM users WHERE {}"
# The same pages, of the rows of one step of a filtered read (store/id_ranges.py).
_STEP_PAGE = "SELECT id, message FROM ({}) AS step ORDER BY id LIMIT %s"
_STEP_FRAMED_PAGE = _FRAMED_PAGE_OF.replace("FROM users WHERE id > %s{}", "FROM ({}) AS step")
_LAST_ID = "SELECT max(id) FROM users"


def _exists(user_id: str, index: int) -> AlreadyExists:
    return AlreadyExists(
        f"requests[{index}]: user {user_id!r} already exists; nothing was created "
        "(set skip_existing to create the others and leave existing users as they are)",
        reason="USER_ALREADY_EXISTS",
        metadata={"user_id": user_id, "index": str(index)},
    )


def _twice_in_batch(users: Sequence[NewUser], index: int, first_index: dict[str, int]) -> AlreadyExists:
    user_id = users[index].user_id
    return AlreadyExists(
        f"requests[{index}]: user {user_id!r} is already requests[{first_index[user_id]}] of this batch; "
        "nothing was created",
        reason="USER_ALREADY_EXISTS",
        metadata={"user_id": user_id, "index": str(index)},
    )


MessageRow = Sequence[Any]  # (id, stored message: memoryview, bytes or None, ...)


@dataclass(frozen=True)
class NewUser:
    """One validated user to create."""

    user_id: str
    email: str
    first_name: str
    last_name: str
    metadata: Metadata


@dataclass(frozen=True)
class KeysetPage:
    """Users in id order: their ids and their stored messages, side by side."""

    ids: list[int]
    users: list[bytes]


@dataclass(frozen=True)
class FramedUsers:
    """Users in id order as one run of length-delimited protobuf fields (tag, length, stored bytes).

    Such a run is what a message's repeated User field holds on the wire, so a
    response is these bytes plus its other fields; nothing is done per user in
    Python. ``after`` and ``last_id`` bound the ids the run covers.
    """

    frames: bytes
    count: int
    after: int
    last_id: int
    # False when a user in the run has no stored bytes (none should): frames is then not whole,
    # and the run must be read user by user (users_through), where missing bytes are built.
    complete: bool = True


class UserStore:
    """Returns users as their serialized ``memstore.v1.User`` bytes."""

    def __init__(
        self, db: peewee.Database, reads: Reads | None = None, *, on_commit: Callable[[], None] = lambda: None
    ) -> None:
        self._db = db
        self._reads = reads or Reads(db)
        self._densities = id_ranges.Densities()
        # Called after each change to a user commits: the change feed's wake-up (wakeups.py).
        self._on_commit = on_commit

    def create(self, user_id: str, email: str, first_name: str, last_name: str, metadata: Metadata) -> bytes:
        """Create the user, row and stored message in one INSERT (user_writes.py); its stored bytes.

        No explicit transaction: the INSERT is atomic by itself, so BEGIN and COMMIT would
        only add two round trips, each a wait for PostgreSQL on a busy machine.
        """
        with connection(self._db) as db:
            try:
                created = user_writes.create(
                    db,
                    user_id=user_id,
                    email=email,
                    first_name=first_name,
                    last_name=last_name,
                    metadata=metadata.json_text,
                )
            except peewee.IntegrityError as error:
                if violated_constraint(error) == "users_user_id_key":
                    raise AlreadyExists(
                        f"user {user_id!r} already exists",
                        reason="USER_ALREADY_EXISTS",
                        metadata={"user_id": user_id},
                    ) from error
                raise
        self._on_commit()
        return created

    def create_many(
        self,
        users: Sequence[NewUser],
        *,
        skip_existing: bool,
        check_result: Callable[[list[bytes]], None] = lambda _: None,
    ) -> list[bytes]:
        """Create ``users`` in one transaction, all or none; their stored bytes in request order.

        A user_id given twice is AlreadyExists; so is one that exists already, unless
        ``skip_existing``, when that user is left as it is and left out of the result.
        The error names the first such request. ``check_result`` sees the bytes before
        the commit and may raise to roll everything back (a response that would not fit).
        """
        first_index: dict[str, int] = {}
        repeated = [i for i, user in enumerate(users) if first_index.setdefault(user.user_id, i) != i]
        if repeated and skip_existing:  # nothing else can come first: no database needed
            raise _twice_in_batch(users, repeated[0], first_index)
        distinct = [user for i, user in enumerate(users) if first_index[user.user_id] == i]
        columns = (
            [user.user_id for user in distinct],
            [user.email for user in distinct],
            [user.first_name for user in distinct],
            [user.last_name for user in distinct],
            [user.metadata.json_text for user in distinct],
        )
        with connection(self._db) as db, db.atomic():
            created = user_writes.create_many(db, columns)
            existing = [first_index[user.user_id] for user in distinct if user.user_id not in created]
            if repeated or (existing and not skip_existing):
                first = min(repeated + ([] if skip_existing else existing))
                if first in repeated:
                    raise _twice_in_batch(users, first, first_index)
                raise _exists(users[first].user_id, first)
            messages = [created[user.user_id] for user in distinct if user.user_id in created]
            check_result(messages)
        if messages:
            self._on_commit()
        return messages

    def get_many(self, user_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored users among ``user_ids``, by user_id; ids with no user are left out."""
        with connection(self._db) as db:
            rows = _GET_MESSAGES.execute(db, (list(user_ids),)).fetchall()
            user_id_of = {row[0]: row[2] for row in rows}
            return {user_id_of[id_]: message for id_, message in self._messages(db, rows)}

    def get(self, user_id: str) -> bytes:
        """The stored user ``user_id``; NotFound when there is none."""
        found = self.get_many([user_id]).get(user_id)
        if found is None:
            raise user_not_found(user_id)
        return found

    def update(self, user_id: str, change: user_writes.Change) -> bytes:
        """Apply ``change`` and store the new bytes in one UPDATE (user_writes.py); those bytes."""
        with connection(self._db) as db, db.atomic():
            # Merged under the row lock: concurrent merges into one user serialise on it.
            pending = user_writes.lock(db, user_id, change)
            if pending is None:
                raise user_not_found(user_id)
            if change.metadata is not None and not change.replace_metadata:
                # Only a merge makes a new object; an update leaving metadata alone never fails on it.
                check_merged_metadata(pending.row[6])  # before anything is written
            updated = user_writes.write(db, pending)
        self._on_commit()
        return updated

    def delete(self, user_id: str) -> None:
        """Delete the user; its sessions go in the same statement (ON DELETE CASCADE)."""
        with connection(self._db) as db, db.atomic():
            cursor = db.execute(User.delete().where(User.user_id == user_id))
            if cursor.rowcount == 0:
                raise user_not_found(user_id)
        self._on_commit()

    def page(self, after: int, limit: int, where: Condition | None = None) -> Page[bytes]:
        """Up to ``limit`` users after the id ``after`` (only those matching ``where``, if given)."""

        def read(source: peewee.Database) -> Page[bytes]:
            with connection(source) as db:
                if where is None:
                    rows = _LIST_MESSAGES.execute(db, (after, limit + 1)).fetchall()
                else:
                    rows = self._filtered_rows(db, after, limit + 1, where)
                page, more = split_page(rows, limit)
                found = self._messages(db, page)
                return Page([message for _, message in found], [id_ for id_, _ in found], more)

        return self._reads.run(read)

    def framed_page(self, after: int, size: int, tag: bytes, where: Condition | None = None) -> FramedUsers:
        """Up to ``size`` users after the id ``after`` (only those matching ``where``, if given),
        framed as fields with ``tag``: one page of a stream, built by PostgreSQL in one value
        (see FramedUsers).

        Each page is read on a connection held only while it is fetched, so a
        slow reader of a stream never pins a pooled connection.
        """

        def read(source: peewee.Database) -> FramedUsers:
            with connection(source) as db:
                if where is not None:
                    return self._filtered_frames(db, after, size, tag, where)
                count, last_id, complete, frames = binary_copy.first_row(
                    db, _FRAMED_PAGE, (tag, after, size), _FRAMED_PAGE_COLUMNS
                )
            return FramedUsers(frames or b"", count, after, last_id or after, complete is not False)

        return self._reads.run(read)

    def users_through(self, after: int, last_id: int, where: Condition | None = None) -> KeysetPage:
        """Every user with an id after ``after`` up to ``last_id`` (matching ``where``, if given):
        a FramedUsers run, user by user."""

        def read(source: peewee.Database) -> KeysetPage:
            with connection(source) as db:
                if where is None:
                    rows = _LIST_MESSAGES_THROUGH.execute(db, (after, last_id)).fetchall()
                else:
                    query = _FILTERED_THROUGH.format(where.sql)
                    rows = db.execute_sql(query, (after, last_id, *where.params)).fetchall()
                found = self._messages(db, rows)
            return KeysetPage([id_ for id_, _ in found], [message for _, message in found])

        return self._reads.run(read)

    def count(self, where: Condition | None = None) -> int:
        """How many users match ``where`` (all of them without it)."""

        def read(source: peewee.Database) -> int:
            with connection(source) as db:
                condition = where or Condition("true", ())
                return int(db.execute_sql(_COUNT.format(condition.sql), condition.params).fetchone()[0])

        return self._reads.run(read)

    def sessions(self, user_id: str, after: int, limit: int) -> Page[sessions_pb2.Session]:
        """Up to ``limit`` sessions of ``user_id`` after the id ``after``; NotFound without the user."""

        def read(source: peewee.Database) -> list[Any]:
            with connection(source) as db:
                found: list[Any] = db.execute_sql(_USER_SESSIONS, (after, limit + 1, user_id)).fetchall()
                return found

        rows = self._reads.run(read)
        if not rows:
            raise user_not_found(user_id)
        rows = [row for row in rows if row[0] is not None]
        page, more = split_page(rows, limit)
        return Page(
            [fill_session(sessions_pb2.Session(), row) for row in page], [row[0] for row in page], more
        )

    def _filtered_rows(
        self, db: peewee.Database, after: int, needed: int, where: Condition
    ) -> list[MessageRow]:
        """Up to ``needed`` (id, message) rows after ``after`` matching ``where``, in id order."""
        if where.metadata_contains is None:
            query = _FILTERED_PAGE.format(where.sql)
            return list(db.execute_sql(query, (after, *where.params, needed)).fetchall())
        rows: list[MessageRow] = []
        scan = self._scan(db, after, needed, where)
        for step in scan:
            query, params = id_ranges.selection(step, "id, message", where)
            found = db.execute_sql(_STEP_PAGE.format(query), (*params, scan.remaining)).fetchall()
            rows.extend(found)
            self._found(db, scan, len(found), found[-1][0] if found else 0)
        self._learn(scan, where)
        return rows

    def _filtered_frames(
        self, db: peewee.Database, after: int, size: int, tag: bytes, where: Condition
    ) -> FramedUsers:
        """framed_page's filtered read: the frames of each step of the read, joined."""
        if where.metadata_contains is None:
            query, params = _FRAMED_PAGE_OF.format(f" AND {where.sql}"), (tag, after, *where.params, size)
            return _framed(after, [binary_copy.first_row(db, query, params, _FRAMED_PAGE_COLUMNS)])
        pieces: list[Sequence[Any]] = []
        scan = self._scan(db, after, size, where)
        for step in scan:
            query, params = id_ranges.selection(step, "id, message, message_length_varint", where)
            piece = binary_copy.first_row(
                db, _STEP_FRAMED_PAGE.format(query), (tag, *params, scan.remaining), _FRAMED_PAGE_COLUMNS
            )
            pieces.append(piece)
            self._found(db, scan, piece[0], piece[1] or 0)
        self._learn(scan, where)
        return _framed(after, pieces)

    def _scan(self, db: peewee.Database, after: int, needed: int, where: Condition) -> id_ranges.FilteredScan:
        scan = id_ranges.FilteredScan(after, needed, self._densities.get((where.sql, where.params)))
        self._end_if_needed(db, scan)
        return scan

    @staticmethod
    def _found(db: peewee.Database, scan: id_ranges.FilteredScan, rows: int, last_id: int) -> None:
        scan.found(rows, last_id)
        UserStore._end_if_needed(db, scan)

    @staticmethod
    def _end_if_needed(db: peewee.Database, scan: id_ranges.FilteredScan) -> None:
        if scan.needs_end:
            scan.end = db.execute_sql(_LAST_ID).fetchone()[0] or 0

    def _learn(self, scan: id_ranges.FilteredScan, where: Condition) -> None:
        density = scan.density
        if density is not None:
            self._densities.put((where.sql, where.params), density)

    @staticmethod
    def _messages(db: peewee.Database, rows: Sequence[MessageRow]) -> list[tuple[int, bytes]]:
        """(id, stored bytes) of ``rows``; bytes are built from the columns for a row that has none.

        A row gone between the two reads (deleted meanwhile) is left out.
        """
        missing = [row[0] for row in rows if row[1] is None]
        if not missing:
            return [(row[0], bytes(row[1])) for row in rows]
        built = user_messages.build(db, missing)
        return [
            (row[0], bytes(row[1]) if row[1] is not None else built[row[0]])
            for row in rows
            if row[1] is not None or row[0] in built
        ]


def _framed(after: int, pieces: Sequence[Sequence[Any]]) -> FramedUsers:
    """One FramedUsers of consecutive framed reads (count, last id, complete, frames), in id order."""
    found = [piece for piece in pieces if piece[0]]
    return FramedUsers(
        b"".join(piece[3] or b"" for piece in found),
        sum(piece[0] for piece in found),
        after,
        found[-1][1] or after if found else after,
        all(piece[2] is not False for piece in found),
    )
