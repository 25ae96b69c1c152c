"""Faults: the database going away and coming back, and clients that give up mid-stream."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import peewee
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server.config import Settings
from memstore_server.database import open_database
from memstore_server.embedded import EmbeddedPostgres
from memstore_server.migrations import migrate

from tests.reliability import record
from tests.support import TIMEOUT, RunningServer, details_of, unique

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_until(condition: Callable[[], bool], seconds: float) -> float | None:
    """Seconds until ``condition()`` held, or None if it never did within ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def drain_slowly(stream: Iterator[object]) -> None:
    """Read a stream like a consumer that cannot keep up."""
    for _ in stream:
        time.sleep(0.01)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, which it may stop and start."""
    postgres = EmbeddedPostgres(tmp_path / "data")
    yield postgres
    postgres.stop()


def test_database_outage_is_unavailable_not_serving_then_recovers_without_restart(
    own_postgres: EmbeddedPostgres,
) -> None:
    db = open_database(own_postgres.start(), pool_size=4, pool_timeout=2)
    migrate(db)
    ours = RunningServer(Settings(listen="127.0.0.1:0", health_interval=0.2), db)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{ours.port}") as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            def status() -> int:
                response: health_pb2.HealthCheckResponse = health.Check(
                    health_pb2.HealthCheckRequest(service="memstore.v1.UserService"), timeout=TIMEOUT
                )
                status_value: int = response.status
                return status_value

            user_id = unique("survivor")
            for _ in range(4):  # fill the pool with connections the outage will break
                users.CreateUser(users_pb2.CreateUserRequest(user_id=unique("warm")), timeout=TIMEOUT)
            users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
            assert status() == SERVING

            own_postgres.stop()
            noticed = wait_until(lambda: status() == NOT_SERVING, 10)
            assert noticed is not None, "health never turned NOT_SERVING"
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT)
            failed_in = time.monotonic() - started
            assert details_of(raised.value).code == grpc.StatusCode.UNAVAILABLE
            assert failed_in < 2, f"took {failed_in:.2f}s to fail"

            own_postgres.start()
            recovered = wait_until(lambda: status() == SERVING, 15)
            assert recovered is not None, "health never came back"
            # Every call after recovery works: no broken pooled connection is handed out.
            for _ in range(10):
                response: users_pb2.GetUserResponse = users.GetUser(
                    users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT
                )
                assert response.user.user_id == user_id
    finally:
        ours.stop()
        db.close_all()
    record(
        "database outage",
        "PostgreSQL stopped under a serving memstore, then started again",
        1,
        f"NOT_SERVING after {noticed:.2f}s; calls failed UNAVAILABLE in {failed_in * 1000:.0f} ms; "
        f"SERVING again {recovered:.2f}s after restart; 10/10 calls after recovery succeeded",
    )


def test_cancelled_and_expired_streams_do_not_exhaust_the_pool(
    database_url: str, db: peewee.Database
) -> None:
    with db.connection_context():
        db.execute_sql(
            "INSERT INTO users (user_id, metadata) SELECT 'pool-' || g || '-' || md5(random()::text), "
            "jsonb_build_object('pad', repeat('x', 4000)) FROM generate_series(1, 300) AS g"
        )
    small = open_database(database_url, pool_size=2, pool_timeout=1)
    handle = RunningServer(Settings(listen="127.0.0.1:0", db_pool_size=2, db_pool_timeout=1), small)
    rounds = 60
    try:
        with grpc.insecure_channel(
            f"127.0.0.1:{handle.port}", options=[("grpc.http2.bdp_probe", 0)]
        ) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            for number in range(rounds):
                if number % 2:
                    stream = users.ListUsersChunked(
                        users_pb2.ListUsersChunkedRequest(chunk_size=1), timeout=TIMEOUT
                    )
                    next(stream)
                    stream.cancel()
                else:
                    stream = users.ListUsersChunked(
                        users_pb2.ListUsersChunkedRequest(chunk_size=1), timeout=0.05
                    )
                    with pytest.raises(grpc.RpcError):
                        drain_slowly(stream)
            for _ in range(5):
                page: users_pb2.ListUsersResponse = users.ListUsers(
                    users_pb2.ListUsersRequest(limit=5), timeout=TIMEOUT
                )
                assert len(page.users) == 5
    finally:
        handle.stop()
        in_use = len(small._in_use)
        small.close_all()
    assert in_use == 0, f"{in_use} pooled connections still checked out after the streams ended"
    record(
        "client cancellation",
        f"{rounds} ListUsersChunked streams, half cancelled after one message, half past a 50 ms deadline, "
        "on a pool of 2 connections",
        rounds,
        "every later call got a connection at once; 0 connections left checked out",
    )
