"""The change feed's outbox: every committed change to a user, written in its own transaction.

WatchUsers (store/changes.py) reads ``user_changes``; triggers on ``users`` write it,
so no write path can forget to, and a change and its record commit or roll back
together. Each row is a copy of what GetUser returns after the change (the stored
message), so a change read later still carries the state it made.

- ``xid`` is the writing transaction (``pg_current_xact_id()``), by which readers cut
  snapshot windows: sequences are taken before commit, so transactions commit out of
  sequence order, and only snapshots tell which of them a reader may have missed.
- ``sequence`` orders the changes of one user: two transactions changing one user
  serialise on its row lock, so the later committer's trigger takes the higher value.
- One row per transaction and user row (the primary key): when a transaction writes a
  user more than once (the serving code wrote the row, then its stored message, until
  store/user_writes.py made each change one write; refill and hand-written SQL still
  may), the later write replaces the first record, keeping the newest state, the
  newest sequence and, for a user created in that transaction, CREATED.
  An UPDATE that leaves the stored message as it was (a counter moved before the
  message is stored again) records nothing, unless the row has no stored message,
  when its columns are what GetUser returns.
- ``commit_time`` is ``clock_timestamp()`` at the trigger: PostgreSQL offers no commit
  time to a trigger, and this is the latest moment inside the transaction.
- A statement trigger on ``user_changes`` sent ``NOTIFY memstore_user_changes`` (one per
  transaction: PostgreSQL folds repeats), delivered at commit, to wake readers; migration 10
  moved the NOTIFY out of the writing transaction, into the server.
- ``user_changes_horizon`` has one row: the feed's identity (tokens of another database
  are refused) and the xid below which changes may have been pruned (older tokens have
  expired).
"""

from __future__ import annotations

from memstore_server.migrations import Migration, run_in_order

STATEMENTS = (
    """
    CREATE TABLE user_changes (
        xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        user_row_id bigint NOT NULL,
        sequence bigserial NOT NULL,
        type smallint NOT NULL,
        user_id text NOT NULL,
        uuid uuid NOT NULL,
        message bytea,
        commit_time timestamptz NOT NULL DEFAULT clock_timestamp(),
        CONSTRAINT user_changes_pkey PRIMARY KEY (xid, user_row_id),
        CONSTRAINT user_changes_type_check CHECK (type IN (2, 3, 4))
    )
    """,
    """
    CREATE TABLE user_changes_horizon (
        singleton boolean PRIMARY KEY DEFAULT true,
        feed_id uuid NOT NULL DEFAULT gen_random_uuid(),
        pruned_below xid8 NOT NULL DEFAULT '0',
        CONSTRAINT user_changes_horizon_singleton_check CHECK (singleton)
    )
    """,
    "INSERT INTO user_changes_horizon DEFAULT VALUES",
    # Types are the values of memstore.v1.UserEvent.Type: 2 created, 3 updated, 4 deleted.
    """
    CREATE FUNCTION memstore_record_user_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        kind smallint := CASE TG_OP WHEN 'INSERT' THEN 2 WHEN 'UPDATE' THEN 3 ELSE 4 END;
        changed users := CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
    BEGIN
        INSERT INTO user_changes AS recorded (user_row_id, type, user_id, uuid, message)
        VALUES (changed.id, kind, changed.user_id, changed.uuid, changed.message)
        ON CONFLICT ON CONSTRAINT user_changes_pkey DO UPDATE SET
            sequence = EXCLUDED.sequence,
            message = EXCLUDED.message,
            commit_time = EXCLUDED.commit_time,
            type = CASE WHEN recorded.type = 2 AND EXCLUDED.type = 3 THEN 2 ELSE EXCLUDED.type END;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER users_record_insert_delete AFTER INSERT OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION memstore_record_user_change()
    """,
    """
    CREATE TRIGGER users_record_update AFTER UPDATE ON users
    FOR EACH ROW WHEN (
        OLD.message IS DISTINCT FROM NEW.message
        OR (NEW.message IS NULL AND OLD.* IS DISTINCT FROM NEW.*)
    )
    EXECUTE FUNCTION memstore_record_user_change()
    """,
    """
    CREATE FUNCTION memstore_notify_user_changes() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('memstore_user_changes', '');
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER user_changes_notify AFTER INSERT ON user_changes
    FOR EACH STATEMENT EXECUTE FUNCTION memstore_notify_user_changes()
    """,
)


MIGRATION = Migration(version=8, name="user_changes", apply=run_in_order(STATEMENTS))
