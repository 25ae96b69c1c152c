"""Each user's serialized User message, for reads that send bytes without building messages."""

from __future__ import annotations

import peewee

from memstore_server.migrations import Migration


def apply(db: peewee.Database) -> None:
    # Imported here: the store is the one place that knows how the bytes are built.
    from memstore_server.store import user_messages

    db.execute_sql("ALTER TABLE users ADD COLUMN message bytea")
    user_messages.refill(db)


MIGRATION = Migration(version=2, name="user_message", apply=apply)
