"""Storage: migrations, the models against the migrated schema, and the indexes the queries use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import peewee
import psycopg2
import pytest
from memstore_server.database import open_database
from memstore_server.errors import FailedPrecondition
from memstore_server.migrations import LATEST_VERSION, MIGRATIONS, applied_versions, migrate
from memstore_server.models import Session, User, UserChange, UserChangesHorizon
from memstore_server.store import changes as change_queries
from memstore_server.store import sessions as session_queries
from memstore_server.store import users as user_queries
from psycopg2 import sql

from tests.conftest import _with_database

# Peewee field type -> PostgreSQL data_type the migration must have used.
EXPECTED_TYPES = {
    "BIGAUTO": "bigint",
    "BIGINT": "bigint",
    "UUID": "uuid",
    "TEXT": "text",
    "JSONB": "jsonb",
    "TIMESTAMPTZ": "timestamp with time zone",
    "BLOB": "bytea",
    "XID8": "xid8",
    "SMALLINT": "smallint",
    "BOOL": "boolean",
}


@pytest.fixture
def fresh_database(admin_url: str) -> Iterator[peewee.Database]:
    """An empty database, unmigrated, dropped after the test."""
    name = f"memstore_schema_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = open_database(_with_database(admin_url, name), pool_size=8, pool_timeout=10)
    try:
        yield database
    finally:
        database.close_all()
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def test_migrate_applies_everything_once(fresh_database: peewee.Database) -> None:
    applied = migrate(fresh_database)
    assert [m.version for m in applied] == [m.version for m in MIGRATIONS]
    assert migrate(fresh_database) == []
    with fresh_database.connection_context():
        assert applied_versions(fresh_database) == [m.version for m in MIGRATIONS]


def test_concurrent_migrations_apply_each_step_once(fresh_database: peewee.Database) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: migrate(fresh_database), range(4)))
    assert sorted(len(applied) for applied in results) == [0, 0, 0, len(MIGRATIONS)]


def test_a_database_from_a_newer_memstore_is_refused(fresh_database: peewee.Database) -> None:
    migrate(fresh_database)
    with fresh_database.connection_context():
        fresh_database.execute_sql(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, 'from the future')",
            (LATEST_VERSION + 1,),
        )
    with pytest.raises(FailedPrecondition, match="does not know"):
        migrate(fresh_database)


@pytest.mark.parametrize("model", [User, Session, UserChange, UserChangesHorizon])
def test_every_model_field_exists_in_the_migrated_schema(
    db: peewee.Database, model: type[peewee.Model]
) -> None:
    with db.connection_context():
        rows = db.execute_sql(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = %s",
            (model._meta.table_name,),
        ).fetchall()
    columns = {name: (data_type, nullable == "YES") for name, data_type, nullable in rows}
    assert set(columns) == {field.column_name for field in model._meta.sorted_fields}
    for field in model._meta.sorted_fields:
        field_type = field.field_type if not isinstance(field, peewee.ForeignKeyField) else "TEXT"
        assert columns[field.column_name][0] == EXPECTED_TYPES[field_type], field.name
        assert columns[field.column_name][1] == field.null, field.name


def _plan(db: peewee.Database, query: str, params: tuple[object, ...]) -> str:
    with db.connection_context(), db.atomic():
        # Tables are tiny in tests; forbid the sequential scan so the plan shows whether an index serves.
        db.execute_sql("SET LOCAL enable_seqscan = off")
        rows = db.execute_sql(f"EXPLAIN {query}", params).fetchall()
    return "\n".join(row[0] for row in rows)


@pytest.mark.parametrize(
    ("query", "params", "index"),
    [
        (user_queries._GET_MESSAGES.text, (["u", "v"],), "users_user_id_key"),
        (user_queries._LIST_MESSAGES.text, (0, 10), "users_pkey"),
        (user_queries._FRAMED_PAGE, (b"\x0a", 0, 10), "users_pkey"),
        (user_queries._USER_SESSIONS, (0, 10, "u"), "sessions_user_id_id_idx"),
        (session_queries._GET_SESSION, ("s",), "sessions_session_id_key"),
        (session_queries._LIST_SESSIONS, (0, 10), "sessions_pkey"),
        (session_queries._LIST_USER_SESSIONS, ("u", 0, 10), "sessions_user_id_id_idx"),
        (session_queries._SESSION_OWNER, ("s",), "sessions_session_id_key"),
        ("DELETE FROM sessions WHERE user_id = %s", ("u",), "sessions_user_id_id_idx"),
    ],
)
def test_every_query_is_served_by_an_index(
    db: peewee.Database, query: str, params: tuple[object, ...], index: str
) -> None:
    plan = _plan(db, query, params)
    assert index in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "Sort" not in plan, plan  # the index already yields id order


def test_a_range_of_users_is_read_through_the_primary_key(db: peewee.Database) -> None:
    """The rare re-read of a stream page (store.users.users_through): by its id range, whatever
    the plan's shape (a bitmap scan and a sort of one page are fine)."""
    plan = _plan(db, user_queries._LIST_MESSAGES_THROUGH.text, (0, 10))
    assert "users_pkey" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_a_window_of_changes_is_read_through_the_xid_key(db: peewee.Database) -> None:
    """The change feed's read (store.changes): bounded by the snapshots' xids, so its cost is
    the window's, however many changes are kept."""
    params = {"seen": "100:110:", "window": "120:130:", "after": 0, "limit": 10}
    plan = _plan(db, change_queries._READ, params)  # type: ignore[arg-type]
    assert "user_changes_pkey" in plan, plan
    assert not [line for line in plan.splitlines() if "Seq Scan on user_changes " in line], plan
