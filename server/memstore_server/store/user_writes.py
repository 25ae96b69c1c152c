"""Writes of a user row that carry its stored message: each change to a user is one row write.

A user's stored message (user_messages.py) holds what PostgreSQL assigns: the id, the
uuid, the timestamps, the metadata as jsonb returns it. Writing the row first and its
message second made every create, update and session count move two writes of the
row: two heap tuples (each new one entered in every index of ``users`` when it is not
HOT), two runs of the change trigger, twice the WAL. Here PostgreSQL first works out
the row as it will be, without writing it (a SELECT: ``nextval`` for a new user, the
changed columns under the row lock for an existing one); Python serializes that row,
and one INSERT or UPDATE stores the columns and the message together.

The selected row has the shape of ``USER_COLUMNS``, so the message is
``user_messages.serialize`` of exactly the row a read would return afterwards: the
values written are the ones selected (timestamps as PostgreSQL returned them, metadata
as the jsonb text it printed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import peewee

from memstore_server.store import user_messages
from memstore_server.store.rows import Row, micros

# One statement, so the creation time is one instant for both timestamps. The metadata
# goes through jsonb here so that the message holds it as the row will return it.
_NEW = (
    "SELECT nextval(pg_get_serial_sequence('users', 'id')), gen_random_uuid()::text, "
    f"%s::jsonb, created, {micros('created')} FROM statement_timestamp() AS created"
)
_INSERT = (
    "INSERT INTO users (id, uuid, user_id, email, first_name, last_name, metadata, "
    "session_count, created_at, updated_at, message) OVERRIDING SYSTEM VALUE "
    "VALUES (%s, %s::uuid, %s, %s, %s, %s, %s::jsonb, 0, %s, %s, %s)"
)
# A batch: one creation time for all, ids taken in request order (nextval is evaluated
# after the sort, as volatile select-list expressions are).
_NEW_MANY = (
    "SELECT nextval(pg_get_serial_sequence('users', 'id')), gen_random_uuid()::text, "
    f"batch.metadata::jsonb, created, {micros('created')} "
    "FROM statement_timestamp() AS created, unnest(%s::text[]) WITH ORDINALITY AS batch(metadata, position) "
    "ORDER BY batch.position"
)
_INSERT_MANY = """
INSERT INTO users (id, uuid, user_id, email, first_name, last_name, metadata,
                   session_count, created_at, updated_at, message) OVERRIDING SYSTEM VALUE
SELECT id, uuid, user_id, email, first_name, last_name, metadata::jsonb, 0, %s, %s, message
FROM unnest(%s::bigint[], %s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[])
    WITH ORDINALITY AS batch(id, uuid, user_id, email, first_name, last_name, metadata, message, position)
ORDER BY position
ON CONFLICT (user_id) DO NOTHING
RETURNING user_id
"""
# The row as a change will leave it, locked. {metadata} and {updated_at} are the new
# values' expressions, each written once in the select list: on a concurrent change
# the row is re-read under the lock and they are evaluated again on it, as an UPDATE's
# own SET would be (values of a joined subquery would be kept from the old row).
# So the clock is read once, and the metadata merged once: the message takes updated_at
# in microseconds (micros_of) and the metadata parsed from the same jsonb text, as
# psycopg2 parses a jsonb column.
_NEXT = f"""
SELECT id, uuid::text, user_id, coalesce(%(email)s, email), coalesce(%(first_name)s, first_name),
       coalesce(%(last_name)s, last_name), ({{metadata}})::text, session_count + %(sessions)s,
       {micros("created_at")}, {{updated_at}}
FROM users WHERE user_id = %(user_id)s
FOR UPDATE
"""
_TOUCH = "GREATEST(clock_timestamp(), updated_at + interval '1 microsecond')"
_METADATA = {
    None: "metadata",
    True: "%(metadata)s::jsonb",
    False: "memstore_jsonb_merge(metadata, %(metadata)s::jsonb)",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def micros_of(at: datetime) -> int:
    """A timestamptz as PostgreSQL returned it, in epoch microseconds: what ``rows.micros`` computes."""
    return (at - _EPOCH) // _MICROSECOND


def create(
    db: peewee.Database, *, user_id: str, email: str, first_name: str, last_name: str, metadata: str
) -> bytes:
    """Insert a user (``metadata`` as JSON text) with its stored message; the message.

    Needs no transaction around it: the SELECT writes nothing a rollback would undo (a
    sequence value is never given back), and the INSERT is one statement. The caller maps
    a unique violation on ``user_id`` to AlreadyExists, as for any INSERT.
    """
    id_, uuid, stored_metadata, created, at = db.execute_sql(_NEW, (metadata,)).fetchone()
    row = (id_, uuid, user_id, email, first_name, last_name, stored_metadata, 0, at, at)
    message = user_messages.serialize(row)
    db.execute_sql(
        _INSERT, (id_, uuid, user_id, email, first_name, last_name, metadata, created, created, message)
    )
    return message


def create_many(db: peewee.Database, columns: Sequence[Sequence[str]]) -> dict[str, bytes]:
    """Insert, in request order and each with its stored message, the users of ``columns``
    (user_ids, emails, first names, last names, metadata JSON texts) that do not exist yet;
    the messages of those inserted, by user_id.

    Existing users are left alone (ON CONFLICT DO NOTHING, their ids and uuids unused);
    the caller decides whether one is an error and then rolls the transaction back.
    """
    user_ids, emails, first_names, last_names, metadata = columns
    new = db.execute_sql(_NEW_MANY, (list(metadata),)).fetchall()
    rows = [
        (id_, uuid, user_id, email, first_name, last_name, stored_metadata, 0, at, at)
        for (id_, uuid, stored_metadata, _, at), user_id, email, first_name, last_name in zip(
            new, user_ids, emails, first_names, last_names, strict=True
        )
    ]
    messages = [user_messages.serialize(row) for row in rows]
    created = new[0][3] if new else None
    inserted = db.execute_sql(
        _INSERT_MANY,
        (
            created,
            created,
            [row[0] for row in rows],
            [row[1] for row in rows],
            list(user_ids),
            list(emails),
            list(first_names),
            list(last_names),
            list(metadata),
            messages,
        ),
    ).fetchall()
    by_user_id = dict(zip(user_ids, messages, strict=True))
    return {user_id: by_user_id[user_id] for (user_id,) in inserted}


@dataclass(frozen=True)
class Change:
    """What a change to a user sets (UpdateUser, a session count move); None leaves a column as stored."""

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    # JSON text of the new metadata, or of the patch merged into it (see replace_metadata).
    metadata: str | None = None
    replace_metadata: bool = False
    # Added to session_count.
    sessions: int = 0
    # Whether updated_at moves: not when only the session count does.
    touch: bool = True


@dataclass(frozen=True)
class Pending:
    """A locked user as a change will leave it, not written yet (``write``)."""

    row: Row
    change: Change
    metadata_text: str
    updated_at: datetime


def lock(db: peewee.Database, user_id: str, change: Change) -> Pending | None:
    """Lock ``user_id`` and work out its row after ``change``; None when there is no such user.

    Nothing is written: the caller may still refuse the result (merged metadata too large)
    or, holding the lock, do other work before ``write``.
    """
    query = _NEXT.format(
        metadata=_METADATA[None if change.metadata is None else change.replace_metadata],
        updated_at=_TOUCH if change.touch else "updated_at",
    )
    params: dict[str, Any] = {
        "email": change.email,
        "first_name": change.first_name,
        "last_name": change.last_name,
        "metadata": change.metadata,
        "sessions": change.sessions,
        "user_id": user_id,
    }
    found = db.execute_sql(query, params).fetchone()
    if found is None:
        return None
    id_, uuid, user, email, first_name, last_name, metadata_text, sessions, created, updated_at = found
    row = (
        id_,
        uuid,
        user,
        email,
        first_name,
        last_name,
        json.loads(metadata_text),
        sessions,
        created,
        micros_of(updated_at),
    )
    return Pending(row, change, metadata_text, updated_at)


def write(db: peewee.Database, pending: Pending) -> bytes:
    """Store ``pending`` (locked by this transaction) and its message in one UPDATE; the message."""
    row, change = pending.row, pending.change
    message = user_messages.serialize(row)
    columns: dict[str, Any] = {"message": message}
    for column, given, value in (
        ("email", change.email, row[3]),
        ("first_name", change.first_name, row[4]),
        ("last_name", change.last_name, row[5]),
        ("metadata", change.metadata, pending.metadata_text),
    ):
        if given is not None:
            columns[column] = value
    if change.sessions:
        columns["session_count"] = row[7]
    if change.touch:
        columns["updated_at"] = pending.updated_at
    assignments = ", ".join(
        f"{column} = %s::jsonb" if column == "metadata" else f"{column} = %s" for column in columns
    )
    db.execute_sql(f"UPDATE users SET {assignments} WHERE id = %s", (*columns.values(), row[0]))
    return message
