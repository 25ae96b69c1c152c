"""Unary pages fit in one message: large items make a page shorter, never a failed call.

Thirteen users, each within every limit (64 KiB of small numbers as JSON is about
350 KB as a protobuf Struct), used to make ListUsers fail RESOURCE_EXHAUSTED while
the access log said OK. Now a page stops before the message size limit with a
next_cursor that goes on from its last item, and a response that cannot be cut
(one item too large, stored before the limits of today) is refused by the server
itself, so the log records the status the caller got.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import peewee
import pytest
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_server.config import DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES, Settings
from memstore_server.validation import MAX_METADATA_BYTES, metadata_size

from tests.support import TIMEOUT, RunningServer, details_of, expect_error, struct, unique, wait_for

# The most small numbers metadata may hold: "[1,1,...]" is 2 bytes a number as JSON, 11 as protobuf.
LARGEST = {"n": [1] * ((MAX_METADATA_BYTES - len('{"n":[]}') + 1) // 2)}
ITEMS = 13


def test_largest_metadata_is_within_the_limit() -> None:
    assert MAX_METADATA_BYTES - 2 <= metadata_size(LARGEST) <= MAX_METADATA_BYTES
    assert struct(LARGEST).ByteSize() * ITEMS > DEFAULT_MAX_MESSAGE_BYTES


def follow(fetch: Callable[[int], Any], start: int, items: str) -> Iterator[Any]:
    """Every page from ``start`` on, following next_cursor; each page checked to be a correct page."""
    cursor = start
    while True:
        page = fetch(cursor)
        assert page.ByteSize() <= DEFAULT_MAX_MESSAGE_BYTES
        listed = getattr(page, items)
        assert listed, "a page before the end holds at least one item"
        if page.next_cursor:
            assert page.next_cursor == listed[-1].id
        yield page
        if not page.next_cursor:
            return
        cursor = page.next_cursor


def test_list_users_pages_stop_before_the_message_limit(users: users_pb2_grpc.UserServiceStub) -> None:
    prefix = unique("large")
    created = [
        users.CreateUser(
            users_pb2.CreateUserRequest(user_id=f"{prefix}-{i:02d}", metadata=struct(LARGEST)),
            timeout=TIMEOUT,
        ).user
        for i in range(ITEMS)
    ]
    start = created[0].id - 1
    pages = list(
        follow(
            lambda cursor: users.ListUsers(
                users_pb2.ListUsersRequest(limit=100, cursor=cursor), timeout=TIMEOUT
            ),
            start,
            "users",
        )
    )
    assert len(pages) >= 2, "13 large users do not fit in one message"
    assert len(pages[0].users) < ITEMS
    mine = [user for page in pages for user in page.users if user.user_id.startswith(prefix)]
    assert [user.user_id for user in mine] == [user.user_id for user in created]
    assert mine == created


@pytest.fixture
def large_sessions(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> tuple[str, list[sessions_pb2.Session]]:
    user_id = unique("owner")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
    created = [
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(
                session_id=f"{user_id}-s{i:02d}", user_id=user_id, metadata=struct(LARGEST)
            ),
            timeout=TIMEOUT,
        ).session
        for i in range(ITEMS)
    ]
    return user_id, created


def test_session_pages_stop_before_the_message_limit(
    users: users_pb2_grpc.UserServiceStub,
    sessions: sessions_pb2_grpc.SessionServiceStub,
    large_sessions: tuple[str, list[sessions_pb2.Session]],
) -> None:
    user_id, created = large_sessions
    listings: dict[str, Callable[[int], Any]] = {
        "ListSessions of the user": lambda cursor: sessions.ListSessions(
            sessions_pb2.ListSessionsRequest(user_id=user_id, limit=100, cursor=cursor), timeout=TIMEOUT
        ),
        "ListSessions of all": lambda cursor: sessions.ListSessions(
            sessions_pb2.ListSessionsRequest(limit=100, cursor=cursor), timeout=TIMEOUT
        ),
        "GetUserSessions": lambda cursor: users.GetUserSessions(
            users_pb2.GetUserSessionsRequest(user_id=user_id, limit=100, cursor=cursor), timeout=TIMEOUT
        ),
    }
    for name, fetch in listings.items():
        pages = list(follow(fetch, created[0].id - 1, "sessions"))
        assert len(pages) >= 2, name
        mine = [s for page in pages for s in page.sessions if s.user_id == user_id]
        assert mine == created, name


# ---- a response that cannot be cut: the server refuses it, and says so in its log ----


@pytest.fixture
def small_limit_server(db: peewee.Database) -> Iterator[RunningServer]:
    running = RunningServer(
        Settings(listen="127.0.0.1:0", max_message_bytes=MIN_MAX_MESSAGE_BYTES), db, database_health=False
    )
    yield running
    running.stop(0)


@pytest.fixture
def oversized_user(db: peewee.Database) -> Iterator[tuple[str, int]]:
    """A user larger than the smallest message limit, written straight into the table as an
    older release with looser limits could have stored it; deleted afterwards."""
    user_id = unique("oversized")
    with db.connection_context():
        (id_,) = db.execute_sql(
            "INSERT INTO users (user_id, metadata) "
            "SELECT %s, jsonb_build_object('n', jsonb_agg(1)) FROM generate_series(1, 120000) RETURNING id",
            (user_id,),
        ).fetchone()
    yield user_id, id_
    with db.connection_context():
        db.execute_sql("DELETE FROM users WHERE id = %s", (id_,))


def test_a_response_over_the_limit_is_refused_by_the_server_and_logged_as_sent(
    small_limit_server: RunningServer, oversized_user: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memstore_server.access")
    user_id, id_ = oversized_user
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]  # the client would take it
    with grpc.insecure_channel(small_limit_server.target, options=options) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        got = expect_error(
            users.GetUser, users_pb2.GetUserRequest(user_id=user_id), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert got.reason == "RESPONSE_TOO_LARGE"
        assert "--max-message-bytes" in got.message
        assert int(got.metadata["size"]) > MIN_MAX_MESSAGE_BYTES
        listed = expect_error(
            users.ListUsers,
            users_pb2.ListUsersRequest(limit=1, cursor=id_ - 1),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert listed.reason == "RESPONSE_TOO_LARGE"
        with pytest.raises(grpc.RpcError) as streamed:
            list(
                users.ListUsersChunked(
                    users_pb2.ListUsersChunkedRequest(chunk_size=1, cursor=id_ - 1), timeout=TIMEOUT
                )
            )
        assert details_of(streamed.value).reason == "RESPONSE_TOO_LARGE"
        # What else is stored still reads: the page after it.
        after = users.ListUsers(users_pb2.ListUsersRequest(limit=1, cursor=id_), timeout=TIMEOUT)
        assert all(user.id > id_ for user in after.users)

    def logged(method: str) -> bool:
        return any(f"{method} RESOURCE_EXHAUSTED" in record.getMessage() for record in list(caplog.records))

    for method in ("UserService/GetUser", "UserService/ListUsers", "UserService/ListUsersChunked"):
        assert wait_for(lambda method=method: logged(method)), method  # type: ignore[misc]
    assert not any("UserService/GetUser OK" in r.getMessage() for r in caplog.records)
