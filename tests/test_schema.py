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
from memstore_server.filtering import SESSIONS, USERS, compile_filter
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


def _plan(db: peewee.Database, query: str, params: tuple[object, ...], *, bitmaps: bool = True) -> str:
    with db.connection_context(), db.atomic():
        # Tables are tiny in tests; forbid the sequential scan so the plan shows whether an index serves.
        db.execute_sql("SET LOCAL enable_seqscan = off")
        if not bitmaps:
            # A bitmap scan then a sort of a few rows is the planner's choice by statistics, which
            # other tests' rows move; without it, the plan shows whether an index yields the order.
            db.execute_sql("SET LOCAL enable_bitmapscan = off")
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
    plan = _plan(db, query, params, bitmaps=False)
    assert index in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "Sort" not in plan, plan  # the index already yields id order


def test_a_range_of_users_is_read_through_the_primary_key(db: peewee.Database) -> None:
    """The rare re-read of a stream page (store.users.users_through): by its id range, whatever
    the plan's shape (a bitmap scan and a sort of one page are fine)."""
    plan = _plan(db, user_queries._LIST_MESSAGES_THROUGH.text, (0, 10))
    assert "users_pkey" in plan, plan
    assert "Seq Scan" not in plan, plan


def _filtered(resource: str, text: str) -> tuple[str, str, tuple[object, ...]]:
    """The page query of a filtered listing and the count query, as the stores run them, and
    the filter's parameters."""
    condition = compile_filter(text, USERS if resource == "users" else SESSIONS)
    assert condition is not None
    queries = user_queries if resource == "users" else session_queries
    page = user_queries._FILTERED_PAGE if resource == "users" else session_queries._FILTERED_SESSIONS
    return page.format(condition.sql), queries._COUNT.format(condition.sql), condition.params


@pytest.mark.parametrize(
    ("resource", "text", "index"),
    [
        ("users", 'metadata.plan = "pro"', "users_metadata_idx"),
        ("users", "metadata.plan.tier = 3 AND metadata.active = true", "users_metadata_idx"),
        ("users", 'email = "Jane@Example.com"', "users_email_lower_idx"),
        ("users", 'email = "jane*"', "users_email_lower_idx"),
        ("users", 'email >= "m"', "users_email_lower_idx"),
        ("users", 'created_at > "2026-01-02T03:04:05Z"', "users_created_at_idx"),
        ("users", 'updated_at <= "2026-01-02T03:04:05Z"', "users_updated_at_idx"),
        ("sessions", 'metadata.kind = "chat"', "sessions_metadata_idx"),
        ("sessions", 'created_at > "2026-01-02T03:04:05Z"', "sessions_created_at_idx"),
        ("sessions", 'updated_at < "2026-01-02T03:04:05Z"', "sessions_updated_at_idx"),
    ],
)
def test_common_filters_are_served_by_their_index(
    db: peewee.Database, resource: str, text: str, index: str
) -> None:
    """The filter's own index can find its rows (the count, with every other way forbidden); and
    no filtered page plans a sequential scan. Which of the two a page uses (the filter's index
    and a sort, or the primary key in order, checking rows until the page is full) is
    PostgreSQL's choice by its statistics, so it is not pinned here."""
    page, count, params = _filtered(resource, text)
    with db.connection_context(), db.atomic():
        db.execute_sql("SET LOCAL enable_seqscan = off")
        page_plan = "\n".join(
            row[0] for row in db.execute_sql(f"EXPLAIN {page}", (0, *params, 101)).fetchall()
        )
        db.execute_sql("SET LOCAL enable_indexscan = off")  # leaves bitmap scans, on the filter's index
        count_plan = "\n".join(row[0] for row in db.execute_sql(f"EXPLAIN {count}", params).fetchall())
    assert index in count_plan, count_plan
    assert "Seq Scan" not in count_plan, count_plan
    assert "Seq Scan" not in page_plan, page_plan


def test_the_filter_indexes_of_the_models_exist(db: peewee.Database) -> None:
    with db.connection_context():
        found = {row[0] for row in db.execute_sql("SELECT indexname FROM pg_indexes").fetchall()}
    declared = {
        index._name
        for model in (User, Session)
        for index in model._meta.fields_to_index()
        if index._name.endswith("_idx")
    }
    assert "users_metadata_idx" in declared
    assert declared <= found, declared - found


def test_a_window_of_changes_is_read_through_the_xid_key(db: peewee.Database) -> None:
    """The change feed's read (store.changes): bounded by the snapshots' xids, so its cost is
    the window's, however many changes are kept."""
    params = {"seen": "100:110:", "window": "120:130:", "after": 0, "limit": 10}
    plan = _plan(db, change_queries._READ, params)  # type: ignore[arg-type]
    assert "user_changes_pkey" in plan, plan
    assert not [line for line in plan.splitlines() if "Seq Scan on user_changes " in line], plan
