"""Users and their sessions, the session counter, and the metadata merge function."""

from __future__ import annotations

from memstore_server.migrations import Migration, run_in_order

STATEMENTS = (
    """
    CREATE TABLE users (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        uuid uuid NOT NULL DEFAULT gen_random_uuid(),
        user_id text NOT NULL,
        email text NOT NULL DEFAULT '',
        first_name text NOT NULL DEFAULT '',
        last_name text NOT NULL DEFAULT '',
        metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
        session_count bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        CONSTRAINT users_user_id_key UNIQUE (user_id),
        CONSTRAINT users_uuid_key UNIQUE (uuid),
        CONSTRAINT users_session_count_check CHECK (session_count >= 0),
        CONSTRAINT users_metadata_object_check CHECK (jsonb_typeof(metadata) = 'object')
    )
    """,
    # A session refers to its user by the user's immutable user_id, so reads need
    # no join; deleting the user deletes its sessions in the same statement.
    """
    CREATE TABLE sessions (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        uuid uuid NOT NULL DEFAULT gen_random_uuid(),
        session_id text NOT NULL,
        user_id text REFERENCES users (user_id) ON DELETE CASCADE,
        metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        CONSTRAINT sessions_session_id_key UNIQUE (session_id),
        CONSTRAINT sessions_uuid_key UNIQUE (uuid),
        CONSTRAINT sessions_metadata_object_check CHECK (jsonb_typeof(metadata) = 'object')
    )
    """,
    # Serves GetUserSessions / ListSessions by user (keyset on id) and the cascade.
    "CREATE INDEX sessions_user_id_id_idx ON sessions (user_id, id)",
    # Deep merge for metadata updates, done in the UPDATE itself so that concurrent
    # merges into one row serialise on its row lock and no key is lost. A JSON null
    # in the patch removes the key; objects merge recursively; anything else replaces.
    """
    CREATE FUNCTION memstore_jsonb_merge(target jsonb, patch jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
    DECLARE
        merged jsonb := CASE WHEN jsonb_typeof(target) = 'object' THEN target ELSE '{}'::jsonb END;
        item record;
    BEGIN
        FOR item IN SELECT key, value FROM jsonb_each(patch) LOOP
            IF jsonb_typeof(item.value) = 'null' THEN
                merged := merged - item.key;
            ELSIF jsonb_typeof(item.value) = 'object' THEN
                merged := merged || jsonb_build_object(
                    item.key, memstore_jsonb_merge(merged -> item.key, item.value));
            ELSE
                merged := merged || jsonb_build_object(item.key, item.value);
            END IF;
        END LOOP;
        RETURN merged;
    END
    $$
    """,
)


MIGRATION = Migration(version=1, name="initial", apply=run_in_order(STATEMENTS))
