"""How rows are read: the select lists shared by reads and RETURNING, and row -> message.

The select lists let PostgreSQL do the cheap conversions (uuid to text, timestamps
to epoch microseconds) so Python builds messages without datetime or UUID objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memstore.v1 import sessions_pb2, users_pb2


def micros(column: str) -> str:
    """SQL for a timestamp as epoch microseconds, exact: extract(epoch ...) is numeric since PostgreSQL 14."""
    return f"(extract(epoch FROM {column}) * 1000000)::bigint"


USER_COLUMNS = (
    "id, uuid::text, user_id, email, first_name, last_name, metadata, session_count, "
    f"{micros('created_at')}, {micros('updated_at')}"
)
SESSION_COLUMNS = (
    "id, uuid::text, session_id, coalesce(user_id, ''), metadata, "
    f"{micros('created_at')}, {micros('updated_at')}"
)

Row = Sequence[Any]


def fill_user(message: users_pb2.User, row: Row) -> users_pb2.User:
    """Copy a USER_COLUMNS row into ``message`` and return it."""
    message.id = row[0]
    message.uuid = row[1]
    message.user_id = row[2]
    message.email = row[3]
    message.first_name = row[4]
    message.last_name = row[5]
    if row[6]:
        message.metadata.update(row[6])
    message.session_count = row[7]
    message.created_at.FromMicroseconds(row[8])
    message.updated_at.FromMicroseconds(row[9])
    return message


def fill_session(message: sessions_pb2.Session, row: Row) -> sessions_pb2.Session:
    """Copy a SESSION_COLUMNS row into ``message`` and return it."""
    message.id = row[0]
    message.uuid = row[1]
    message.session_id = row[2]
    message.user_id = row[3]
    if row[4]:
        message.metadata.update(row[4])
    message.created_at.FromMicroseconds(row[5])
    message.updated_at.FromMicroseconds(row[6])
    return message
