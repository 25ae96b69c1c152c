"""The change feed's NOTIFY moves out of the writing transaction, into the server (wakeups.py).

Migration 8's statement trigger on ``user_changes`` sent ``NOTIFY memstore_user_changes``
inside every transaction that changed a user. PostgreSQL holds one lock for the whole
database server from the commit of a transaction that notifies until its end, the WAL
flush included: such commits run one at a time and never share a flush. Under 64
concurrent CreateUser calls, backends waited on that lock 52-72% of the time, and
CreateUser ran at half the rate it reached without the trigger. Servers now send the
NOTIFY after their changes commit, one at a time per process (ChangeAnnouncer).

Changes made by other programs than a memstore server (SQL by hand, a server of an
older version during a rolling upgrade) no longer wake watchers at once: the feed
reads them at its next tick, within the watch heartbeat.
"""

from __future__ import annotations

from memstore_server.migrations import Migration, run_in_order

STATEMENTS = (
    "DROP TRIGGER user_changes_notify ON user_changes",
    "DROP FUNCTION memstore_notify_user_changes()",
)


MIGRATION = Migration(version=10, name="notify_after_commit", apply=run_in_order(STATEMENTS))
