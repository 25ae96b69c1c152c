"""Users: their queries and transactions.

Reads run SQL built once at import and executed on the pooled connection (no
per-call query building); writes go through the Peewee models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import peewee
from memstore.v1 import users_pb2

from memstore_server.database import connection
from memstore_server.errors import AlreadyExists, InvalidArgument, user_not_found
from memstore_server.models import User
from memstore_server.store.errors import violated_constraint
from memstore_server.store.rows import (
    SESSION_COLUMNS,
    USER_COLUMNS,
    Row,
    add_sessions,
    add_users,
    fill_user,
    next_cursor,
)
from memstore_server.validation import MAX_METADATA_BYTES, Metadata, metadata_json, metadata_size

_GET_USER = f"SELECT {USER_COLUMNS} FROM users WHERE user_id = %s"
_LIST_USERS = f"SELECT {USER_COLUMNS} FROM users WHERE id > %s ORDER BY id LIMIT %s"
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


@dataclass(frozen=True)
class UserChanges:
    """What an update sets; None means: leave as stored."""

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    metadata: Metadata | None = None
    # True: metadata replaces the stored object; False: it is deep-merged into it.
    replace_metadata: bool = False


# Room kept in every streamed message for its next_cursor and gRPC framing.
_MESSAGE_SLACK_BYTES = 64


class UserStore:
    def __init__(self, db: peewee.Database, *, max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self._db = db
        self._max_message_bytes = max_message_bytes

    def create(
        self, user_id: str, email: str, first_name: str, last_name: str, metadata: Metadata
    ) -> users_pb2.User:
        query = User.insert(
            user_id=user_id, email=email, first_name=first_name, last_name=last_name, metadata=metadata.value
        ).returning(_RETURN_USER)
        with connection(self._db) as db:
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
        return fill_user(users_pb2.User(), row)

    def get(self, user_id: str) -> users_pb2.User:
        with connection(self._db) as db:
            row = db.execute_sql(_GET_USER, (user_id,)).fetchone()
        if row is None:
            raise user_not_found(user_id)
        return fill_user(users_pb2.User(), row)

    def update(self, user_id: str, changes: UserChanges) -> users_pb2.User:
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
            size = metadata_size(metadata_json(row[6]))
            if size > MAX_METADATA_BYTES:
                raise InvalidArgument.single(
                    "metadata",
                    f"the merged metadata would be {size} bytes; at most {MAX_METADATA_BYTES} are allowed",
                )
        return fill_user(users_pb2.User(), row)

    def delete(self, user_id: str) -> None:
        """Delete the user; its sessions go in the same statement (ON DELETE CASCADE)."""
        with connection(self._db) as db, db.atomic():
            cursor = db.execute(User.delete().where(User.user_id == user_id))
            if cursor.rowcount == 0:
                raise user_not_found(user_id)

    def page(self, after: int, limit: int) -> users_pb2.ListUsersResponse:
        with connection(self._db) as db:
            rows = db.execute_sql(_LIST_USERS, (after, limit + 1)).fetchall()
        page, cursor = next_cursor(rows, limit)
        response = users_pb2.ListUsersResponse(next_cursor=cursor)
        add_users(response.users, page)
        return response

    def chunks(self, after: int, size: int) -> Iterator[users_pb2.ListUsersChunkedResponse]:
        """Every user after ``after`` in id order, ``size`` per message.

        Keyset pages, each on a connection held only while it is fetched, so a slow
        reader never pins a pooled connection. The next page is fetched before the
        current one is sent, so the last message knows it is last (next_cursor 0).
        """
        page = self._fetch_page(after, size)
        while page:
            following = self._fetch_page(page[-1][0], size)
            chunk = users_pb2.ListUsersChunkedResponse(next_cursor=page[-1][0] if following else 0)
            add_users(chunk.users, page)
            if chunk.ByteSize() + _MESSAGE_SLACK_BYTES <= self._max_message_bytes:
                yield chunk
            else:
                yield from self._split(chunk, final=not following)
            page = following

    def _split(
        self, chunk: users_pb2.ListUsersChunkedResponse, *, final: bool
    ) -> Iterator[users_pb2.ListUsersChunkedResponse]:
        """``chunk`` as several messages that each fit the largest message the server may send.

        Users with large metadata would otherwise make a message the client refuses.
        Each part still ends with its last user's id as next_cursor, so a consumer
        resumes from any of them; only the very last part of the stream says 0.
        """
        budget = self._max_message_bytes - _MESSAGE_SLACK_BYTES
        part = users_pb2.ListUsersChunkedResponse()
        used = 0
        for user in chunk.users:
            # Field tag, length varint (at most 5 bytes), then the user itself.
            size = 6 + user.ByteSize()
            if part.users and used + size > budget:
                part.next_cursor = part.users[-1].id
                yield part
                part, used = users_pb2.ListUsersChunkedResponse(), 0
            part.users.append(user)
            used += size
        part.next_cursor = 0 if final else part.users[-1].id
        yield part

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

    def _fetch_page(self, after: int, size: int) -> list[Row]:
        with connection(self._db) as db:
            rows: list[Row] = db.execute_sql(_LIST_USERS, (after, size)).fetchall()
        return rows
