"""Each user's serialized ``User`` message, stored beside its columns and kept fresh.

The read paths (GetUser, ListUsers, ListUsersChunked) send these bytes as they are,
which makes them several times faster than building messages per call. The cost is
a duty: every statement that changes a user row must store new bytes with it; the
serving code's writes do so in the same statement (user_writes.py), anything else in
the same transaction, through ``save``. A test compares the stored bytes with a freshly
built message after every kind of change; migrations that change what a User
holds must refill them (``refill``).
"""

from __future__ import annotations

from collections.abc import Sequence

import peewee
from memstore.v1 import users_pb2

from memstore_server.store.rows import USER_COLUMNS, Row, fill_user

_SAVE = "UPDATE users SET message = %s WHERE id = %s"
_SAVE_MANY = (
    "UPDATE users SET message = batch.message "
    "FROM unnest(%s::bigint[], %s::bytea[]) AS batch(id, message) WHERE users.id = batch.id"
)
_REFILL_BATCH = 2000


def serialize(row: Row) -> bytes:
    """The stored form of a USER_COLUMNS row: deterministic, so equal users have equal bytes."""
    return fill_user(users_pb2.User(), row).SerializeToString(deterministic=True)


def save(db: peewee.Database, row: Row) -> bytes:
    """Store the bytes for ``row`` (just written, still locked by this transaction) and return them."""
    message = serialize(row)
    db.execute_sql(_SAVE, (message, row[0]))
    return message


def save_many(db: peewee.Database, rows: Sequence[Row]) -> list[bytes]:
    """``save`` for many rows in one statement; the bytes in the order of ``rows``."""
    messages = [serialize(row) for row in rows]
    if rows:
        db.execute_sql(_SAVE_MANY, ([row[0] for row in rows], messages))
    return messages


def build(db: peewee.Database, user_ids: Sequence[int]) -> dict[int, bytes]:
    """Bytes built from the columns of users whose stored bytes are missing (none should be)."""
    rows = db.execute_sql(
        f"SELECT {USER_COLUMNS} FROM users WHERE id = ANY(%s)", (list(user_ids),)
    ).fetchall()
    return {row[0]: serialize(row) for row in rows}


def refill(db: peewee.Database) -> int:
    """Rebuild every user's stored bytes from its columns, in batches; returns how many."""
    done, after = 0, 0
    while True:
        rows = db.execute_sql(
            f"SELECT {USER_COLUMNS} FROM users WHERE id > %s ORDER BY id LIMIT %s FOR UPDATE",
            (after, _REFILL_BATCH),
        ).fetchall()
        if not rows:
            return done
        save_many(db, rows)
        done += len(rows)
        after = rows[-1][0]
