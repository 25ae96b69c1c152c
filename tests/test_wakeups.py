"""The change feed's wake-up: servers NOTIFY after their changes to users commit (wakeups.py).

A test connection LISTENs as a server's feed does. Every kind of change made through
the server is followed by a notification, sent after the change committed (the change
is visible to the listener when it arrives); a change written by hand sends none, as
no trigger notifies inside the writing transaction any more (migration 10); and a
burst of changes is announced by far fewer notifications than changes.
"""

from __future__ import annotations

import asyncio
import select
import threading
import time
from collections.abc import Callable, Iterator

import peewee
import psycopg2
import psycopg2.extensions
import pytest
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_server.wakeups import CHANNEL, ChangeAnnouncer

from tests.support import TIMEOUT, unique

# Generous: the machine may be loaded.
ARRIVAL_SECONDS = 10.0
# How long a test waits to be sure that nothing comes.
SILENCE_SECONDS = 1.0


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f"LISTEN {CHANNEL}")
    yield conn
    conn.close()


def notifications(conn: psycopg2.extensions.connection, seconds: float) -> int:
    """Notifications that arrive within ``seconds`` (all of them, however many)."""
    deadline, count = time.monotonic() + seconds, 0
    while (left := deadline - time.monotonic()) > 0:
        if select.select([conn], [], [], left)[0]:
            conn.poll()
            count += len(conn.notifies)
            conn.notifies.clear()
    return count


def next_notification(conn: psycopg2.extensions.connection) -> bool:
    """Whether a notification arrives within ARRIVAL_SECONDS (it is consumed)."""
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while (left := deadline - time.monotonic()) > 0:
        if select.select([conn], [], [], left)[0]:
            conn.poll()
            if conn.notifies:
                conn.notifies.clear()
                return True
    return False


def changed_users(conn: psycopg2.extensions.connection) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM user_changes")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def test_every_change_through_the_server_is_announced_after_it_commits(
    users: users_pb2_grpc.UserServiceStub,
    sessions: sessions_pb2_grpc.SessionServiceStub,
    listener: psycopg2.extensions.connection,
) -> None:
    user_id, session_id = unique("wake"), unique("wake-session")
    changes: list[tuple[str, Callable[[], object]]] = [
        (
            "CreateUser",
            lambda: users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT),
        ),
        (
            "UpdateUser",
            lambda: users.UpdateUser(
                users_pb2.UpdateUserRequest(user_id=user_id, email="a@b.co"), timeout=TIMEOUT
            ),
        ),
        (
            "CreateSession",
            lambda: sessions.CreateSession(
                sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id), timeout=TIMEOUT
            ),
        ),
        (
            "DeleteSession",
            lambda: sessions.DeleteSession(
                sessions_pb2.DeleteSessionRequest(session_id=session_id), timeout=TIMEOUT
            ),
        ),
        (
            "DeleteUser",
            lambda: users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user_id), timeout=TIMEOUT),
        ),
        (
            "BatchCreateUsers",
            lambda: users.BatchCreateUsers(
                users_pb2.BatchCreateUsersRequest(
                    requests=[users_pb2.CreateUserRequest(user_id=unique("wake-batch")) for _ in range(3)]
                ),
                timeout=TIMEOUT,
            ),
        ),
    ]
    notifications(listener, 0.2)  # whatever earlier tests left on the way
    for name, change in changes:
        before = changed_users(listener)
        change()
        assert next_notification(listener), f"no NOTIFY after {name}"
        assert changed_users(listener) > before, f"{name}: notified before its change was visible"


def test_a_change_written_by_hand_notifies_nobody(
    db: peewee.Database, listener: psycopg2.extensions.connection
) -> None:
    """No trigger notifies inside the writing transaction (migration 10): a program other than
    a server reaches watchers at the feed's next tick."""
    notifications(listener, 0.2)
    with db.connection_context():
        db.execute_sql("INSERT INTO users (user_id) VALUES (%s)", (unique("by-hand"),))
    assert notifications(listener, SILENCE_SECONDS) == 0


def test_a_burst_of_changes_is_announced_by_a_few_notifications(
    db: peewee.Database, listener: psycopg2.extensions.connection
) -> None:
    """A hundred commits announced from four threads at once: one NOTIFY in flight at a time, and
    one more after it for those that came meanwhile, so a few notifications, and at least one."""
    calls = 100

    async def burst() -> None:
        announcer = ChangeAnnouncer(db)
        start = threading.Barrier(4)

        def announce(count: int) -> None:
            start.wait()
            for _ in range(count):
                announcer.committed()

        await asyncio.gather(*(asyncio.to_thread(announce, calls // 4) for _ in range(4)))
        await asyncio.sleep(0.5)  # the last NOTIFY on its way
        await announcer.close()

    notifications(listener, 0.2)
    asyncio.run(burst())
    received = notifications(listener, SILENCE_SECONDS)
    assert 1 <= received < calls // 4, received
