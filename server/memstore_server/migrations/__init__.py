"""Versioned schema migrations: the history of the schema that models.py describes.

Each migration is a module ``mNNNN_<name>.py`` exposing ``MIGRATION``. ``migrate``
applies the pending ones in order, in one transaction under an advisory lock, so
several server processes starting at once never apply one twice, and a failed
migration leaves the schema as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import peewee

from memstore_server.errors import FailedPrecondition

logger = logging.getLogger(__name__)

# Arbitrary but fixed: the key of the advisory lock that serialises migrations.
_ADVISORY_LOCK_KEY = 0x6D656D73746F7265 & 0x7FFFFFFFFFFFFFFF  # "memstore"


@dataclass(frozen=True)
class Migration:
    """One step of the schema's history."""

    version: int
    name: str
    apply: Callable[[peewee.Database], None]


def run_in_order(statements: Sequence[str]) -> Callable[[peewee.Database], None]:
    """The ``apply`` of a migration that is only SQL statements, run one after another."""

    def apply(db: peewee.Database) -> None:
        for statement in statements:
            db.execute_sql(statement)

    return apply


def _all_migrations() -> tuple[Migration, ...]:
    from memstore_server.migrations import (
        m0001_initial,
        m0002_user_message,
        m0003_one_creation_time,
        m0006_message_length_varint,
        m0007_filter_indexes,
        m0008_user_changes,
        m0009_metadata_by_id_range,
        m0010_notify_after_commit,
        m0011_user_json_line,
    )

    found = (
        m0001_initial.MIGRATION,
        m0002_user_message.MIGRATION,
        m0003_one_creation_time.MIGRATION,
        m0006_message_length_varint.MIGRATION,
        m0007_filter_indexes.MIGRATION,
        m0008_user_changes.MIGRATION,
        m0009_metadata_by_id_range.MIGRATION,
        m0010_notify_after_commit.MIGRATION,
        m0011_user_json_line.MIGRATION,
    )
    versions = [migration.version for migration in found]
    assert versions == sorted(set(versions)), "migration versions must be unique and ordered"
    return found


MIGRATIONS: tuple[Migration, ...] = _all_migrations()
LATEST_VERSION = MIGRATIONS[-1].version

_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def applied_versions(db: peewee.Database) -> list[int]:
    """Versions recorded in the database, oldest first; empty on a fresh database."""
    cursor = db.execute_sql("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return []
    return [row[0] for row in db.execute_sql("SELECT version FROM schema_migrations ORDER BY version")]


def migrate(db: peewee.Database) -> list[Migration]:
    """Apply every pending migration; return those applied (empty when up to date).

    Raises FailedPrecondition when the database was migrated by a newer memstore,
    whose schema this code does not know.
    """
    with db.connection_context(), db.atomic():
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_KEY,))
        db.execute_sql(_CREATE_HISTORY)
        done = set(applied_versions(db))
        unknown = sorted(done - {migration.version for migration in MIGRATIONS})
        if unknown:
            raise FailedPrecondition(
                f"the database has schema versions {unknown} that this memstore does not know; "
                "run a memstore at least as new as the one that migrated it",
                reason="SCHEMA_TOO_NEW",
            )
        applied = []
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            logger.info("applying migration %04d %s", migration.version, migration.name)
            migration.apply(db)
            db.execute_sql(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied.append(migration)
        return applied
