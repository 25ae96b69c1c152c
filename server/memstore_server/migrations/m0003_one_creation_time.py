"""A new row's created_at and updated_at are one instant.

Both defaulted to clock_timestamp(), which PostgreSQL evaluates once per column,
so a fresh row could read updated_at a microsecond after created_at. The
statement's start time is one value for every column of the statement.
"""

from __future__ import annotations

import peewee

from memstore_server.migrations import Migration


def apply(db: peewee.Database) -> None:
    for table in ("users", "sessions"):
        for column in ("created_at", "updated_at"):
            db.execute_sql(f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT statement_timestamp()")


MIGRATION = Migration(version=3, name="one_creation_time", apply=apply)
