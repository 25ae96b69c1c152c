"""The process under duress: kill -9 while writing, and SIGTERM while streaming and serving load."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import peewee
import pytest
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc

from tests.reliability import record
from tests.support import (
    TIMEOUT,
    as_url,
    bulk_users,
    free_port,
    running,
    server_environment,
    unique,
    wait_until_serving,
)

pytestmark = pytest.mark.process

CLEAN_ENDINGS = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


def _invariants(db: peewee.Database) -> None:
    with db.connection_context():
        wrong_counts = db.execute_sql(
            "SELECT user_id FROM users u WHERE session_count <> "
            "(SELECT count(*) FROM sessions s WHERE s.user_id = u.user_id)"
        ).fetchall()
        orphans = db.execute_sql(
            "SELECT session_id FROM sessions s WHERE s.user_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = s.user_id)"
        ).fetchall()
    assert wrong_counts == []
    assert orphans == []


def _existing(db: peewee.Database, table: str, column: str, ids: list[str]) -> set[str]:
    with db.connection_context():
        rows = db.execute_sql(f"SELECT {column} FROM {table} WHERE {column} = ANY(%s)", (ids,)).fetchall()
    return {row[0] for row in rows}


def _seed_users_with_sessions(db: peewee.Database, *, users: int, sessions_each: int) -> dict[str, list[str]]:
    """Users that already have sessions, inserted in bulk; returns each user's session ids."""
    prefix = unique("doomed")
    with db.connection_context(), db.atomic():
        db.execute_sql(
            "INSERT INTO users (user_id, session_count) "
            "SELECT %s || '-' || g, %s FROM generate_series(1, %s) g",
            (prefix, sessions_each, users),
        )
        db.execute_sql(
            "INSERT INTO sessions (session_id, user_id) "
            "SELECT %s || '-' || g || '-s' || s, %s || '-' || g "
            "FROM generate_series(1, %s) g, generate_series(1, %s) s",
            (prefix, prefix, users, sessions_each),
        )
    return {
        f"{prefix}-{g}": [f"{prefix}-{g}-s{s}" for s in range(1, sessions_each + 1)]
        for g in range(1, users + 1)
    }


def _until_failure(stop: threading.Event, action: Callable[[], None]) -> None:
    while not stop.is_set():
        try:
            action()
        except grpc.RpcError:
            return


def test_kill_9_loses_no_acknowledged_write_and_leaves_nothing_half_done(
    database_url: str, db: peewee.Database, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{free_port()}"
    args = ["serve", "--database-url", as_url(database_url), "--listen", target]
    doomed = _seed_users_with_sessions(db, users=3000, sessions_each=5)
    created_users: list[str] = []
    created_sessions: list[str] = []
    deleted_users: list[str] = []
    stop = threading.Event()
    with running(args, tmp_path / "first") as process:
        wait_until_serving(process, target)
        with grpc.insecure_channel(target) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            sessions = sessions_pb2_grpc.SessionServiceStub(channel)
            to_delete = list(doomed)

            def create() -> None:
                user_id = unique("acked")
                users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id, metadata=None), timeout=TIMEOUT)
                created_users.append(user_id)
                session_id = unique("acked-s")
                sessions.CreateSession(
                    sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id), timeout=TIMEOUT
                )
                created_sessions.append(session_id)

            def delete() -> None:
                if not to_delete:
                    time.sleep(0.01)
                    return
                user_id = to_delete.pop()
                users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user_id), timeout=TIMEOUT)
                deleted_users.append(user_id)

            workers = [threading.Thread(target=_until_failure, args=(stop, create)) for _ in range(4)]
            workers += [threading.Thread(target=_until_failure, args=(stop, delete)) for _ in range(2)]
            for worker in workers:
                worker.start()
            time.sleep(1.0)
            os.kill(process.popen.pid, signal.SIGKILL)
            process.popen.wait(timeout=10)
            stop.set()
            for worker in workers:
                worker.join(timeout=TIMEOUT + 5)

    assert created_users, "no create was acknowledged before the kill"
    assert deleted_users, "no delete was acknowledged before the kill"
    assert _existing(db, "users", "user_id", created_users) == set(created_users)
    assert _existing(db, "sessions", "session_id", created_sessions) == set(created_sessions)
    assert _existing(db, "users", "user_id", deleted_users) == set()
    for user_id, session_ids in doomed.items():
        users_left = _existing(db, "users", "user_id", [user_id])
        sessions_left = _existing(db, "sessions", "session_id", session_ids)
        # A delete is all or nothing: the user with every session, or neither.
        assert (users_left, sessions_left) in ((set(), set()), ({user_id}, set(session_ids)))
    _invariants(db)

    with running(args, tmp_path / "second") as restarted:
        wait_until_serving(restarted, target)
        with grpc.insecure_channel(target) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            response: users_pb2.GetUserResponse = users.GetUser(
                users_pb2.GetUserRequest(user_id=created_users[-1]), timeout=TIMEOUT
            )
            assert response.user.session_count in (0, 1)
    record(
        "crash safety",
        "kill -9 of the server under 4 threads of CreateUser+CreateSession and 2 of DeleteUser "
        "(of 3000 users with 5 sessions each)",
        1,
        f"{len(created_users)} acknowledged creates, {len(created_sessions)} acknowledged sessions and "
        f"{len(deleted_users)} acknowledged deletes all found as acknowledged after restart; "
        "no half-deleted user, no orphan session, every session_count right",
    )


@contextlib.contextmanager
def unread_streams(target: str, count: int) -> Iterator[None]:
    """Streams whose readers never read: they cannot finish, so only the grace period ends them."""
    with grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        streams = [
            stub.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=100), timeout=60)
            for _ in range(count)
        ]
        try:
            yield
        finally:
            for stream in streams:
                stream.cancel()


def test_sigterm_drains_streams_and_load_refuses_new_calls_and_closes_every_connection(
    database_url: str, db: peewee.Database, tmp_path: Path
) -> None:
    bulk_users(db, 400, pad=2000)
    application = f"memstore-shutdown-{unique('t')}"
    target = f"127.0.0.1:{free_port()}"
    grace = 3.0
    args = [
        "serve",
        "--database-url",
        as_url(database_url, application_name=application),
        "--listen",
        target,
        "--grace-period",
        str(grace),
    ]
    endings: list[grpc.StatusCode] = []
    unary_endings: list[grpc.StatusCode] = []
    stop = threading.Event()
    # Tracing on, towards a collector that is not there: its exporter must not hold up the exit.
    absent_collector = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    with running(args, tmp_path, env={**server_environment(), **absent_collector}) as process:
        wait_until_serving(process, target)
        with (
            unread_streams(target, 4),
            grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) as channel,
        ):
            users = users_pb2_grpc.UserServiceStub(channel)

            def slow_stream() -> None:
                try:
                    for _ in users.ListUsersChunked(
                        users_pb2.ListUsersChunkedRequest(chunk_size=1), timeout=60
                    ):
                        time.sleep(0.02)
                    endings.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    endings.append(error.code())

            def unary_load() -> None:
                while not stop.is_set():
                    try:
                        users.ListUsers(users_pb2.ListUsersRequest(limit=10), timeout=TIMEOUT)
                    except grpc.RpcError as error:
                        unary_endings.append(error.code())
                        return

            streams = [threading.Thread(target=slow_stream) for _ in range(3)]
            loaders = [threading.Thread(target=unary_load) for _ in range(3)]
            for thread in streams + loaders:
                thread.start()
            time.sleep(0.5)
            signalled = time.monotonic()
            process.terminate()
            exit_code = process.wait_for_exit(grace + 10)
            exited_after = time.monotonic() - signalled
            stop.set()
            for thread in streams + loaders:
                thread.join(timeout=30)
        with grpc.insecure_channel(target) as late_channel:
            late = users_pb2_grpc.UserServiceStub(late_channel)
            with pytest.raises(grpc.RpcError) as refused:
                late.ListUsers(users_pb2.ListUsersRequest(limit=1), timeout=2)
    assert exit_code == 0, process.log()
    assert exited_after < grace + 2, f"exited {exited_after:.1f}s after SIGTERM, grace {grace}s"
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(endings) == 3
    assert set(endings) <= {grpc.StatusCode.OK} | CLEAN_ENDINGS, endings
    assert set(unary_endings) <= CLEAN_ENDINGS, unary_endings
    with db.connection_context():
        (left_open,) = db.execute_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchone()
    assert left_open == 0
    assert "SIGTERM: refusing new calls" in process.log()
    record(
        "graceful shutdown",
        f"SIGTERM during 3 slow and 4 unread ListUsersChunked streams, 3 unary load loops and tracing "
        f"to an absent collector (grace {grace:.0f}s)",
        1,
        f"exit 0 after {exited_after:.1f}s; streams ended {sorted(c.name for c in endings)}; "
        f"unary loops ended {sorted(c.name for c in unary_endings)}; new calls UNAVAILABLE; "
        f"{left_open} database connections left open",
    )
