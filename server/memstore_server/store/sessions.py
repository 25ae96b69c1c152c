"""Sessions: their queries and transactions, and the session counter of their user.

Lock order, to stay free of deadlocks with DeleteUser (which locks the user row,
then its sessions through the cascade): every write here that touches a user's
counter locks the user row first and the session row second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peewee
from memstore.v1 import sessions_pb2

from memstore_server.database import connection
from memstore_server.errors import AlreadyExists, session_not_found, user_not_found
from memstore_server.filtering import Condition
from memstore_server.models import Session
from memstore_server.replica import Reads
from memstore_server.store import user_writes
from memstore_server.store.errors import violated_constraint
from memstore_server.store.pages import Page, split_page
from memstore_server.store.rows import SESSION_COLUMNS, fill_session
from memstore_server.validation import Metadata, check_merged_metadata

_GET_SESSION = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = %s"
_LIST_SESSIONS = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id > %s ORDER BY id LIMIT %s"
_LIST_USER_SESSIONS = (
    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = %s AND id > %s ORDER BY id LIMIT %s"
)
# Filtered listings and counts: the filter's condition (parameterised) goes where {} stands.
_FILTERED_SESSIONS = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id > %s AND {{}} ORDER BY id LIMIT %s"
_FILTERED_USER_SESSIONS = (
    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = %s AND id > %s AND {{}} ORDER BY id LIMIT %s"
)
_COUNT = "SELECT count(*) FROM sessions WHERE {}"
_USER_EXISTS = "SELECT 1 FROM users WHERE user_id = %s"
_SESSION_OWNER = "SELECT user_id FROM sessions WHERE session_id = %s"
_TOUCH = peewee.SQL("GREATEST(clock_timestamp(), updated_at + interval '1 microsecond')")
_RETURN_SESSION = peewee.SQL(SESSION_COLUMNS)
# A session's creation or deletion moves its user's counter (and stored message), not updated_at.
_ONE_MORE = user_writes.Change(sessions=1, touch=False)
_ONE_LESS = user_writes.Change(sessions=-1, touch=False)
# A session deleted and re-created under another user between our read of its
# owner and our lock makes us start over; this bounds how often.
_DELETE_ATTEMPTS = 5


class SessionStore:
    """Sessions; ListSessions reads through ``reads`` (the read replica when usable), the rest the primary."""

    def __init__(
        self, db: peewee.Database, reads: Reads | None = None, *, on_commit: Callable[[], None] = lambda: None
    ) -> None:
        self._db = db
        self._reads = reads or Reads(db)
        # Called after a change to a user (its session count) commits: the change feed's wake-up.
        self._on_commit = on_commit

    def create(self, session_id: str, user_id: str, metadata: Metadata) -> sessions_pb2.Session:
        insert = Session.insert(
            session_id=session_id, user=user_id or None, metadata=metadata.value
        ).returning(_RETURN_SESSION)
        with connection(self._db) as db, db.atomic():
            if user_id:
                counted = user_writes.lock(db, user_id, _ONE_MORE)
                if counted is None:
                    raise user_not_found(user_id)
                user_writes.write(db, counted)
            try:
                row = db.execute(insert).fetchone()
            except peewee.IntegrityError as error:
                if violated_constraint(error) == "sessions_session_id_key":
                    raise AlreadyExists(
                        f"session {session_id!r} already exists",
                        reason="SESSION_ALREADY_EXISTS",
                        metadata={"session_id": session_id},
                    ) from error
                raise
        if user_id:
            self._on_commit()
        return fill_session(sessions_pb2.Session(), row)

    def get(self, session_id: str) -> sessions_pb2.Session:
        with connection(self._db) as db:
            row = db.execute_sql(_GET_SESSION, (session_id,)).fetchone()
        if row is None:
            raise session_not_found(session_id)
        return fill_session(sessions_pb2.Session(), row)

    def update(self, session_id: str, metadata: Metadata | None, *, replace: bool) -> sessions_pb2.Session:
        values: dict[object, object] = {Session.updated_at: _TOUCH}
        if metadata is not None:
            values[Session.metadata] = (
                metadata.value
                if replace
                else peewee.SQL("memstore_jsonb_merge(metadata, %s::jsonb)", (metadata.json_text,))
            )
        query = Session.update(values).where(Session.session_id == session_id).returning(_RETURN_SESSION)
        with connection(self._db) as db, db.atomic():
            row = db.execute(query).fetchone()
            if row is None:
                raise session_not_found(session_id)
            if metadata is not None and not replace:
                # Only a merge makes a new object; an update leaving metadata alone never fails on it.
                check_merged_metadata(row[4])  # rolls the update back when too large
        return fill_session(sessions_pb2.Session(), row)

    def delete(self, session_id: str) -> None:
        with connection(self._db) as db:
            for _ in range(_DELETE_ATTEMPTS):
                owner_row = db.execute_sql(_SESSION_OWNER, (session_id,)).fetchone()
                if owner_row is None:
                    raise session_not_found(session_id)
                owner = owner_row[0]
                with db.atomic():
                    # Locks the owner; its counter is written only if the session goes.
                    counted = None if owner is None else user_writes.lock(db, owner, _ONE_LESS)
                    deleted = db.execute(
                        Session.delete().where(
                            (Session.session_id == session_id)
                            & (Session.user.is_null() if owner is None else Session.user == owner)
                        )
                    )
                    gone = deleted.rowcount == 1
                    if gone and counted is not None:
                        user_writes.write(db, counted)
                if gone:
                    if owner is not None:
                        self._on_commit()
                    return
            raise session_not_found(session_id)

    def page(
        self, after: int, limit: int, user_id: str = "", where: Condition | None = None
    ) -> Page[sessions_pb2.Session]:
        """Up to ``limit`` sessions after the id ``after``: of ``user_id`` when given (NotFound
        without that user), and matching ``where`` when given."""

        def read(source: peewee.Database) -> list[Any]:
            with connection(source) as db:
                if not user_id:
                    if where is None:
                        rows: list[Any] = db.execute_sql(_LIST_SESSIONS, (after, limit + 1)).fetchall()
                    else:
                        query = _FILTERED_SESSIONS.format(where.sql)
                        rows = db.execute_sql(query, (after, *where.params, limit + 1)).fetchall()
                    return rows
                if db.execute_sql(_USER_EXISTS, (user_id,)).fetchone() is None:
                    raise user_not_found(user_id)
                if where is None:
                    found: list[Any] = db.execute_sql(
                        _LIST_USER_SESSIONS, (user_id, after, limit + 1)
                    ).fetchall()
                else:
                    query = _FILTERED_USER_SESSIONS.format(where.sql)
                    found = db.execute_sql(query, (user_id, after, *where.params, limit + 1)).fetchall()
                return found

        rows = self._reads.run(read)
        page, more = split_page(rows, limit)
        return Page(
            [fill_session(sessions_pb2.Session(), row) for row in page], [row[0] for row in page], more
        )

    def count(self, where: Condition | None = None) -> int:
        """How many sessions match ``where`` (all of them without it)."""

        def read(source: peewee.Database) -> int:
            with connection(source) as db:
                condition = where or Condition("true", ())
                return int(db.execute_sql(_COUNT.format(condition.sql), condition.params).fetchone()[0])

        return self._reads.run(read)
