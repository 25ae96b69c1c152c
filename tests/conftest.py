"""Shared fixtures: a real PostgreSQL, the migrated database, and a real server on a loopback port.

PostgreSQL is the embedded one unless MEMSTORE_TEST_DATABASE_URL names a server;
either way the suite works in a database of its own, created here and dropped at
the end, so it never touches data it did not make. With MEMSTORE_TEST_POOLER
(``HOST:PORT`` of a pooler in transaction mode in front of that server, as
tests/test_pgbouncer.py sets it), the database is created directly and then
used only through the pooler, with prepared statements off.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import peewee
import psycopg2
import pytest
from memstore.v1 import sessions_pb2_grpc, users_pb2_grpc
from memstore_server.config import Settings
from memstore_server.database import open_database
from memstore_server.embedded import EmbeddedPostgres
from memstore_server.migrations import migrate
from psycopg2 import sql

from tests import reliability
from tests.support import RunningServer, ServerAddress

TEST_DATABASE_ENV = "MEMSTORE_TEST_DATABASE_URL"
POOLER_ENV = "MEMSTORE_TEST_POOLER"


def through_pooler() -> bool:
    return bool(os.environ.get(POOLER_ENV))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write RELIABILITY.md when asked to (see tests/reliability.py)."""
    args = " ".join(str(arg) for arg in session.config.invocation_params.args)
    reliability.write_report(f"pytest {args}".strip())


def _with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead (URL or key=value form)."""
    params = psycopg2.extensions.parse_dsn(url)
    params["dbname"] = name
    dsn: str = psycopg2.extensions.make_dsn(**params)
    return dsn


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL with the right to create databases: the given server's, or an embedded one's."""
    given = os.environ.get(TEST_DATABASE_ENV)
    if given:
        yield given
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("embedded"))
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def database_url(admin_url: str) -> Iterator[str]:
    """A fresh, empty database for this test run, dropped afterwards."""
    name = f"memstore_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _with_database(admin_url, name)
        if through_pooler():
            host, _, port = os.environ[POOLER_ENV].rpartition(":")
            params = psycopg2.extensions.parse_dsn(url)
            params.update(host=host, port=port)
            url = psycopg2.extensions.make_dsn(**params)
        yield url
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        admin.close()


@pytest.fixture(scope="session")
def db(database_url: str) -> Iterator[peewee.Database]:
    database = open_database(
        database_url, pool_size=32, pool_timeout=10, prepared_statements=not through_pooler()
    )
    migrate(database)
    yield database
    database.close_all()


@pytest.fixture(scope="session")
def server(db: peewee.Database) -> Iterator[ServerAddress]:
    """One real memstore server for the whole run, on a free loopback port."""
    running = RunningServer(
        Settings(listen="127.0.0.1:0", db_pool_size=32, prepared_statements=not through_pooler()), db
    )
    yield ServerAddress(running.target)
    running.stop()


@pytest.fixture
def start_server(db: peewee.Database) -> Iterator[Callable[[Settings], RunningServer]]:
    """Starts extra servers with settings of the test's choosing; all are stopped afterwards."""
    servers: list[RunningServer] = []

    def start(settings: Settings) -> RunningServer:
        servers.append(RunningServer(settings, db))
        return servers[-1]

    yield start
    for running in servers:
        running.stop()


@pytest.fixture(scope="session")
def channel(server: ServerAddress) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as chan:
        grpc.channel_ready_future(chan).result(timeout=10)
        yield chan


@pytest.fixture(scope="session")
def users(channel: grpc.Channel) -> users_pb2_grpc.UserServiceStub:
    return users_pb2_grpc.UserServiceStub(channel)


@pytest.fixture(scope="session")
def sessions(channel: grpc.Channel) -> sessions_pb2_grpc.SessionServiceStub:
    return sessions_pb2_grpc.SessionServiceStub(channel)


@pytest.fixture
def empty_store(db: peewee.Database) -> None:
    """Start the test with no users and no sessions (ids keep growing: sequences are not reset)."""
    with db.connection_context():
        db.execute_sql("TRUNCATE sessions, users")


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
