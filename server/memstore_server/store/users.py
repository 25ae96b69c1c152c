"""Users: their queries and transactions.

Reads return the users' stored serialized messages (see user_messages.py) as bytes,
framed into responses by hand, and run SQL built once at import. Writes go through
the Peewee models and store fresh bytes in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import peewee
from memstore.v1 import users_pb2

from memstore_server import wire
from memstore_server.database import connection
from memstore_server.errors import AlreadyExists, user_not_found
from memstore_server.models import User
from memstore_server.store import user_messages
from memstore_server.store.errors import violated_constraint
from memstore_server.store.prepared import Prepared
from memstore_server.store.rows import SESSION_COLUMNS, USER_COLUMNS, add_sessions, next_cursor
from memstore_server.validation import Metadata, check_merged_metadata

_GET_MESSAGE = Prepared("memstore_get_user", ("text",), "SELECT id, message FROM users WHERE user_id = $1")
_LIST_MESSAGES = Prepared(
    "memstore_list_users",
    ("bigint", "bigint"),
    "SELECT id, message FROM users WHERE id > $1 ORDER BY id LIMIT $2",
)
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
_TOUCH = peewee.SQL("GREATEST(clock_timestamp(), updated_at + interval '1 microsecond')")
_RETURN_USER = peewee.SQL(USER_COLUMNS)
# Room kept in every streamed message for its next_cursor field.
_NEXT_CURSOR_BYTES = 11
# users = 1 in ListUsersResponse and ListUsersChunkedResponse; next_cursor = 2.
_USERS_FIELD, _NEXT_CURSOR_FIELD = 1, 2

MessageRow = tuple[int, Any]  # (id, stored message: memoryview, bytes or None)


@dataclass(frozen=True)
class UserChanges:
    """What an update sets; None means: leave as stored."""

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    metadata: Metadata | None = None
    # True: metadata replaces the stored object; False: it is deep-merged into it.
    replace_metadata: bool = False


@dataclass(frozen=True)
class Chunk:
    """One ListUsersChunked message, already serialized, and how many users it holds."""

    payload: bytes
    users: int


class UserStore:
    """Returns users as serialized ``memstore.v1.User`` bytes, and pages as serialized responses."""

    def __init__(self, db: peewee.Database, *, max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self._db = db
        self._max_message_bytes = max_message_bytes

    def create(self, user_id: str, email: str, first_name: str, last_name: str, metadata: Metadata) -> bytes:
        query = User.insert(
            user_id=user_id, email=email, first_name=first_name, last_name=last_name, metadata=metadata.value
        ).returning(_RETURN_USER)
        with connection(self._db) as db, db.atomic():
            try:
                row = db.execute(query).fetchone()
            except peewee.IntegrityError as error:
                if violated_constraint(error) == "users_user_id_key":
                    raise AlreadyExists(
                        f"user {user_id!r} already exists",
                        reason="USER_ALREADY_EXISTS",
                        metadata={"user_id": user_id},
                    ) from error
                raise
            return user_messages.save(db, row)

    def get(self, user_id: str) -> bytes:
        with connection(self._db) as db:
            row = _GET_MESSAGE.execute(db, (user_id,)).fetchone()
            found = self._messages(db, [row]) if row is not None else []
        if not found:
            raise user_not_found(user_id)
        return found[0][1]

    def update(self, user_id: str, changes: UserChanges) -> bytes:
        values: dict[Any, Any] = {User.updated_at: _TOUCH}
        for field, value in (
            (User.email, changes.email),
            (User.first_name, changes.first_name),
            (User.last_name, changes.last_name),
        ):
            if value is not None:
                values[field] = value
        if changes.metadata is not None:
            if changes.replace_metadata:
                values[User.metadata] = changes.metadata.value
            else:
                # Merged in the UPDATE itself: concurrent merges serialise on the row lock.
                values[User.metadata] = peewee.SQL(
                    "memstore_jsonb_merge(metadata, %s::jsonb)", (changes.metadata.json_text,)
                )
        query = User.update(values).where(User.user_id == user_id).returning(_RETURN_USER)
        with connection(self._db) as db, db.atomic():
            row = db.execute(query).fetchone()
            if row is None:
                raise user_not_found(user_id)
            check_merged_metadata(row[6])  # rolls the update back when too large
            return user_messages.save(db, row)

    def delete(self, user_id: str) -> None:
        """Delete the user; its sessions go in the same statement (ON DELETE CASCADE)."""
        with connection(self._db) as db, db.atomic():
            cursor = db.execute(User.delete().where(User.user_id == user_id))
            if cursor.rowcount == 0:
                raise user_not_found(user_id)

    def page(self, after: int, limit: int) -> bytes:
        """A serialized ListUsersResponse."""
        with connection(self._db) as db:
            rows: list[MessageRow] = _LIST_MESSAGES.execute(db, (after, limit + 1)).fetchall()
            page, cursor = next_cursor(rows, limit)
            messages = self._messages(db, page)
        return wire.repeated(_USERS_FIELD, (message for _, message in messages)) + wire.int_field(
            _NEXT_CURSOR_FIELD, cursor
        )

    def chunks(self, after: int, size: int) -> Iterator[Chunk]:
        """Every user after ``after`` in id order, ``size`` per serialized ListUsersChunkedResponse.

        Keyset pages, each on a connection held only while it is fetched, so a slow
        reader never pins a pooled connection. The next page is fetched before the
        current one is sent, so the last message knows it is last (next_cursor 0).
        A page too large for one message is split; every part still ends with its
        last user's id as next_cursor.
        """
        page = self._fetch_page(after, size)
        while page:
            following = self._fetch_page(page[-1][0], size)
            yield from self._frame(page, final=not following)
            page = following

    def sessions(self, user_id: str, after: int, limit: int) -> users_pb2.GetUserSessionsResponse:
        with connection(self._db) as db:
            rows = db.execute_sql(_USER_SESSIONS, (after, limit + 1, user_id)).fetchall()
        if not rows:
            raise user_not_found(user_id)
        rows = [row for row in rows if row[0] is not None]
        page, cursor = next_cursor(rows, limit)
        response = users_pb2.GetUserSessionsResponse(next_cursor=cursor)
        add_sessions(response.sessions, page)
        return response

    def _fetch_page(self, after: int, size: int) -> list[tuple[int, bytes]]:
        with connection(self._db) as db:
            rows: list[MessageRow] = _LIST_MESSAGES.execute(db, (after, size)).fetchall()
            return self._messages(db, rows)

    def _frame(self, page: list[tuple[int, bytes]], *, final: bool) -> Iterator[Chunk]:
        budget = self._max_message_bytes - _NEXT_CURSOR_BYTES
        start, used = 0, 0
        for index, (_, message) in enumerate(page):
            size = wire.field_size(_USERS_FIELD, len(message))
            if index > start and used + size > budget:
                yield self._chunk(page[start:index], page[index - 1][0])
                start, used = index, 0
            used += size
        yield self._chunk(page[start:], 0 if final else page[-1][0])

    @staticmethod
    def _chunk(part: list[tuple[int, bytes]], cursor: int) -> Chunk:
        payload = wire.repeated(_USERS_FIELD, (message for _, message in part))
        return Chunk(payload + wire.int_field(_NEXT_CURSOR_FIELD, cursor), len(part))

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
