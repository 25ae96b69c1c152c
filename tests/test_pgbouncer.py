"""Connection poolers: memstore behind a real PgBouncer in transaction pooling mode.

In transaction mode PgBouncer hands each transaction whichever server connection
is free, so nothing may rely on session state: no statement prepared on one
connection and executed on another (``--prepared-statements off``), no
session-level lock (migrations take a transaction-level advisory lock). The
contract tests run through it, in a pytest of their own.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import peewee
import psycopg2
import pytest
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server.database import connection, open_database
from memstore_server.migrations import MIGRATIONS
from memstore_server.store.users import UserStore
from psycopg2 import sql

from tests import pgbouncer
from tests.conftest import POOLER_ENV, TEST_DATABASE_ENV
from tests.postgres_cluster import Node, primary, scratch
from tests.support import (
    SERVER_COMMAND,
    TIMEOUT,
    as_url,
    free_port,
    running,
    server_environment,
    unique,
    wait_until_serving,
)

ROOT = Path(__file__).resolve().parent.parent
# The tests of the contract over the wire, and of the stored messages beneath it.
CONTRACT_TESTS = (
    "tests/test_users.py",
    "tests/test_sessions.py",
    "tests/test_listing.py",
    "tests/test_update_semantics.py",
    "tests/test_concurrency.py",
    "tests/test_stored_messages.py",
    "tests/test_page_budget.py",
)


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[Node, Path]]:
    """A PostgreSQL of this module's own, on a loopback port, and a scratch folder beside it.

    Not the suite's server: PgBouncer runs as an unprivileged user, which must reach the
    server (the embedded one listens on a socket in a folder of root's) and its own files."""
    with scratch() as folder:
        node = primary(folder / "server")
        try:
            yield node, folder
        finally:
            node.stop("immediate")


@pytest.fixture(scope="module")
def bouncer(backend: tuple[Node, Path]) -> Iterator[pgbouncer.Bouncer]:
    binary, reason = pgbouncer.installed()
    if binary is None:
        pytest.skip(reason)
    node, folder = backend
    with pgbouncer.running(binary, node.url("postgres"), folder / "pgbouncer") as running_bouncer:
        yield running_bouncer


@pytest.fixture
def fresh_database(backend: tuple[Node, Path]) -> Iterator[str]:
    """An empty database made directly on the server (its URL there), dropped afterwards."""
    admin_url = backend[0].url("postgres")
    name = f"memstore_pooled_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        params = psycopg2.extensions.parse_dsn(admin_url)
        params["dbname"] = name
        yield psycopg2.extensions.make_dsn(**params)
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        admin.close()


def test_the_contract_tests_pass_through_pgbouncer_in_transaction_mode(
    bouncer: pgbouncer.Bouncer, backend: tuple[Node, Path]
) -> None:
    node, folder = backend
    before = bouncer.stats()
    env = {
        **server_environment(),
        TEST_DATABASE_ENV: node.url("postgres"),
        POOLER_ENV: f"{bouncer.host}:{bouncer.port}",
    }
    env.pop("MEMSTORE_RELIABILITY_REPORT", None)
    # A base folder of its own: a pytest that starts makes the shared one private again.
    options = ["-q", "-p", "no:cacheprovider", "-x", f"--basetemp={folder / 'pytest'}"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *options, *CONTRACT_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in summary
    assert "skipped" not in summary, summary
    # Their database was used through PgBouncer, not around it.
    carried = {
        name: count - before.get(name, 0)
        for name, count in bouncer.stats().items()
        if name.startswith("memstore_test_")
    }
    assert carried, "PgBouncer carried no transaction of the contract tests' database"
    assert max(carried.values()) > 1000, carried


def test_concurrent_migrations_through_pgbouncer_apply_each_step_once(
    bouncer: pgbouncer.Bouncer, fresh_database: str
) -> None:
    url = as_url(bouncer.url(fresh_database))
    processes = [
        subprocess.Popen(
            [str(SERVER_COMMAND), "migrate", "--database-url", url, "--prepared-statements", "off"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_environment(),
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=120)[0].decode(errors="replace") for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, outputs
    conn = psycopg2.connect(fresh_database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            versions = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    assert versions == [migration.version for migration in MIGRATIONS]


def test_a_server_process_serves_through_pgbouncer_with_prepared_statements_off(
    bouncer: pgbouncer.Bouncer, fresh_database: str, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{free_port()}"
    env = {**server_environment(), "MEMSTORE_PREPARED_STATEMENTS": "off"}
    args = ["serve", "--database-url", as_url(bouncer.url(fresh_database)), "--listen", target]
    with running(args, tmp_path, env=env) as process:
        wait_until_serving(process, target)
        with grpc.insecure_channel(target) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            created = [unique("pooled") for _ in range(30)]
            for user_id in created:
                users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
            calls = [
                users.GetUser.future(users_pb2.GetUserRequest(user_id=u), timeout=TIMEOUT)
                for u in created * 10
            ]
            assert {call.result().user.user_id for call in calls} == set(created)
            streamed = [
                user.user_id
                for chunk in users.ListUsersChunked(
                    users_pb2.ListUsersChunkedRequest(chunk_size=7), timeout=TIMEOUT
                )
                for user in chunk.users
            ]
            assert streamed == created
        process.terminate()
        assert process.wait_for_exit(30) == 0
    assert "ERROR" not in process.log(), process.log()


def _prepared_on_connection(db: peewee.Database) -> int:
    return int(db.execute_sql("SELECT count(*) FROM pg_prepared_statements").fetchone()[0])


@pytest.mark.parametrize("prepared", [True, False], ids=["on", "off"])
def test_prepared_statements_off_prepares_nothing(
    database_url: str, db: peewee.Database, prepared: bool
) -> None:
    """``db`` (the suite's, migrated) is not used: a pool of one connection is, so it is the one asked."""
    pool = open_database(database_url, pool_size=1, pool_timeout=5, prepared_statements=prepared)
    store = UserStore(pool)
    try:
        store.get_many([unique("nobody")])
        store.page(0, 10)
        with connection(pool) as held:
            count = _prepared_on_connection(held)
            remembered = set(held.connection().prepared)
    finally:
        pool.close_all()
    if prepared:
        assert count >= 2
        assert {"memstore_get_users", "memstore_list_users"} <= remembered
    else:
        assert count == 0
        assert remembered == set()
