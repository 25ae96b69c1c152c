"""Indexes behind the common filters of ListUsers, ListUsersChunked, ListSessions and the counts.

- ``lower(email) COLLATE "C"``: email compares case-insensitively and orders in C
  collation (filtering/compiler.py writes exactly this expression); a C-collated
  b-tree serves equality, ranges and prefix patterns (``email = "jane*"``).
- ``created_at``, ``updated_at``: ranges of time.
- GIN ``jsonb_path_ops`` on ``metadata``: metadata equality is written as containment
  (``metadata @> '{"plan": "pro"}'``), which this operator class serves, at about a
  third of the size of the default ``jsonb_ops``.

Built inside the migration's transaction (CREATE INDEX CONCURRENTLY cannot be), so the
tables are locked against writes while it runs: seconds per million users here.
"""

from __future__ import annotations

from memstore_server.migrations import Migration, run_in_order

STATEMENTS = (
    'CREATE INDEX users_email_lower_idx ON users ((lower(email) COLLATE "C"))',
    "CREATE INDEX users_created_at_idx ON users (created_at)",
    "CREATE INDEX users_updated_at_idx ON users (updated_at)",
    "CREATE INDEX users_metadata_idx ON users USING gin (metadata jsonb_path_ops)",
    "CREATE INDEX sessions_created_at_idx ON sessions (created_at)",
    "CREATE INDEX sessions_updated_at_idx ON sessions (updated_at)",
    "CREATE INDEX sessions_metadata_idx ON sessions USING gin (metadata jsonb_path_ops)",
)


MIGRATION = Migration(version=7, name="filter_indexes", apply=run_in_order(STATEMENTS))
