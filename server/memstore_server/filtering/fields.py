"""Which fields a filter may name, per resource, and the SQL column behind each."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Kind(enum.Enum):
    STRING = "string"
    INTEGER = "integer"
    TIMESTAMP = "timestamp"
    METADATA = "metadata"


@dataclass(frozen=True)
class Column:
    """A filterable field: its kind and the SQL that reads it (never user text)."""

    kind: Kind
    sql: str
    # email: compared through lower(), which its index is built on.
    case_insensitive: bool = False
    # A NULL column that the API shows as "" (a session without a user).
    null_is_empty: bool = False


@dataclass(frozen=True)
class Resource:
    name: str
    columns: Mapping[str, Column]


USERS = Resource(
    "user",
    {
        "user_id": Column(Kind.STRING, "user_id"),
        "email": Column(Kind.STRING, "email", case_insensitive=True),
        "first_name": Column(Kind.STRING, "first_name"),
        "last_name": Column(Kind.STRING, "last_name"),
        "id": Column(Kind.INTEGER, "id"),
        "session_count": Column(Kind.INTEGER, "session_count"),
        "created_at": Column(Kind.TIMESTAMP, "created_at"),
        "updated_at": Column(Kind.TIMESTAMP, "updated_at"),
        "metadata": Column(Kind.METADATA, "metadata"),
    },
)

SESSIONS = Resource(
    "session",
    {
        "session_id": Column(Kind.STRING, "session_id"),
        "user_id": Column(Kind.STRING, "user_id", null_is_empty=True),
        "id": Column(Kind.INTEGER, "id"),
        "created_at": Column(Kind.TIMESTAMP, "created_at"),
        "updated_at": Column(Kind.TIMESTAMP, "updated_at"),
        "metadata": Column(Kind.METADATA, "metadata"),
    },
)
