"""Listing: ListUsers, GetUserSessions, ListSessions pages and the ListUsersChunked stream."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import peewee
import pytest
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_server.config import Settings
from memstore_server.store.users import FramedUsers, UserStore

from tests.support import (
    TIMEOUT,
    RunningServer,
    ServerAddress,
    bulk_users,
    delete_ids,
    expect_error,
    unique,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("empty_store")


def all_pages(users: users_pb2_grpc.UserServiceStub, limit: int, cursor: int = 0) -> list[list[int]]:
    pages = []
    while True:
        response = users.ListUsers(users_pb2.ListUsersRequest(limit=limit, cursor=cursor), timeout=TIMEOUT)
        pages.append([user.id for user in response.users])
        if response.next_cursor == 0:
            return pages
        assert response.next_cursor == response.users[-1].id
        cursor = response.next_cursor


def stream(
    users: users_pb2_grpc.UserServiceStub, chunk_size: int = 0, cursor: int = 0
) -> list[users_pb2.ListUsersChunkedResponse]:
    request = users_pb2.ListUsersChunkedRequest(chunk_size=chunk_size, cursor=cursor)
    return list(users.ListUsersChunked(request, timeout=TIMEOUT))


def test_list_pages_through_every_user_with_gaps_in_ids(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    ids = bulk_users(db, 60)
    gone = ids[5:17] + ids[30:31] + ids[-3:]
    delete_ids(db, gone)
    expected = [i for i in ids if i not in gone]
    pages = all_pages(users, limit=7)
    assert [i for page in pages for i in page] == expected
    assert all(len(page) == 7 for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= 7


def test_list_cursor_is_exclusive_and_next_cursor_is_zero_only_at_the_end(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    ids = bulk_users(db, 10)
    page = users.ListUsers(users_pb2.ListUsersRequest(limit=4, cursor=ids[2]), timeout=TIMEOUT)
    assert [u.id for u in page.users] == ids[3:7]
    assert page.next_cursor == ids[6]
    exact = users.ListUsers(users_pb2.ListUsersRequest(limit=3, cursor=ids[6]), timeout=TIMEOUT)
    assert [u.id for u in exact.users] == ids[7:10]
    assert exact.next_cursor == 0  # the page ends the table exactly
    past = users.ListUsers(users_pb2.ListUsersRequest(limit=3, cursor=ids[-1]), timeout=TIMEOUT)
    assert list(past.users) == []
    assert past.next_cursor == 0


def test_list_limit_defaults_to_100_and_is_capped_at_1000(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    bulk_users(db, 1005)
    assert len(users.ListUsers(users_pb2.ListUsersRequest(), timeout=TIMEOUT).users) == 100
    capped = users.ListUsers(users_pb2.ListUsersRequest(limit=5000), timeout=TIMEOUT)
    assert len(capped.users) == 1000
    assert capped.next_cursor == capped.users[-1].id


def test_list_on_an_empty_store_is_empty(users: users_pb2_grpc.UserServiceStub) -> None:
    response = users.ListUsers(users_pb2.ListUsersRequest(limit=10), timeout=TIMEOUT)
    assert (list(response.users), response.next_cursor) == ([], 0)
    assert stream(users) == []


@pytest.mark.parametrize(
    ("rpc", "request_message", "field"),
    [
        ("ListUsers", users_pb2.ListUsersRequest(limit=-1), "limit"),
        ("ListUsers", users_pb2.ListUsersRequest(cursor=-5), "cursor"),
        ("GetUserSessions", users_pb2.GetUserSessionsRequest(user_id="u", limit=-1), "limit"),
        ("GetUserSessions", users_pb2.GetUserSessionsRequest(user_id="u", cursor=-1), "cursor"),
    ],
)
def test_negative_limit_or_cursor_is_invalid(
    users: users_pb2_grpc.UserServiceStub, rpc: str, request_message: object, field: str
) -> None:
    details = expect_error(getattr(users, rpc), request_message, grpc.StatusCode.INVALID_ARGUMENT)
    assert field in details.violations


@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (sessions_pb2.ListSessionsRequest(limit=-1), "limit"),
        (sessions_pb2.ListSessionsRequest(cursor=-1), "cursor"),
    ],
)
def test_negative_session_listing_arguments_are_invalid(
    sessions: sessions_pb2_grpc.SessionServiceStub, request_message: object, field: str
) -> None:
    details = expect_error(sessions.ListSessions, request_message, grpc.StatusCode.INVALID_ARGUMENT)
    assert field in details.violations


@pytest.mark.parametrize("chunk_size", [-1])
def test_negative_chunk_size_or_cursor_is_invalid(
    users: users_pb2_grpc.UserServiceStub, chunk_size: int
) -> None:
    for request, field in (
        (users_pb2.ListUsersChunkedRequest(chunk_size=chunk_size), "chunk_size"),
        (users_pb2.ListUsersChunkedRequest(cursor=-1), "cursor"),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            list(users.ListUsersChunked(request, timeout=TIMEOUT))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (raised.value.details() or "")


def test_user_sessions_are_paged_in_id_order_and_only_that_users(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    owner, other = unique("owner"), unique("other")
    for user_id in (owner, other):
        users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
    mine = []
    for index in range(7):
        for user_id in (owner, other):
            session = sessions.CreateSession(
                sessions_pb2.CreateSessionRequest(session_id=unique(f"s{index}"), user_id=user_id),
                timeout=TIMEOUT,
            ).session
            if user_id == owner:
                mine.append(session.id)
    seen: list[int] = []
    cursor = 0
    while True:
        page = users.GetUserSessions(
            users_pb2.GetUserSessionsRequest(user_id=owner, limit=3, cursor=cursor), timeout=TIMEOUT
        )
        assert all(s.user_id == owner for s in page.sessions)
        seen.extend(s.id for s in page.sessions)
        if page.next_cursor == 0:
            break
        assert page.next_cursor == page.sessions[-1].id
        cursor = page.next_cursor
    assert seen == mine
    everything = users.GetUserSessions(users_pb2.GetUserSessionsRequest(user_id=owner), timeout=TIMEOUT)
    assert [s.id for s in everything.sessions] == mine
    assert everything.next_cursor == 0


def test_user_without_sessions_has_an_empty_page(users: users_pb2_grpc.UserServiceStub) -> None:
    user_id = unique("lonely")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
    page = users.GetUserSessions(users_pb2.GetUserSessionsRequest(user_id=user_id), timeout=TIMEOUT)
    assert (list(page.sessions), page.next_cursor) == ([], 0)


def test_list_sessions_all_and_by_user(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    owner = unique("owner")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=owner), timeout=TIMEOUT)
    owned = [
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=unique("owned"), user_id=owner), timeout=TIMEOUT
        ).session.id
        for _ in range(3)
    ]
    loose = [
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=unique("loose")), timeout=TIMEOUT
        ).session.id
        for _ in range(2)
    ]
    first = sessions.ListSessions(sessions_pb2.ListSessionsRequest(limit=4), timeout=TIMEOUT)
    assert [s.id for s in first.sessions] == sorted(owned + loose)[:4]
    assert first.next_cursor == first.sessions[-1].id
    rest = sessions.ListSessions(
        sessions_pb2.ListSessionsRequest(limit=4, cursor=first.next_cursor), timeout=TIMEOUT
    )
    assert [s.id for s in rest.sessions] == sorted(owned + loose)[4:]
    assert rest.next_cursor == 0
    by_user = sessions.ListSessions(sessions_pb2.ListSessionsRequest(user_id=owner), timeout=TIMEOUT)
    assert [s.id for s in by_user.sessions] == owned
    details = expect_error(
        sessions.ListSessions,
        sessions_pb2.ListSessionsRequest(user_id=unique("ghost")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details.reason == "USER_NOT_FOUND"


def test_stream_sends_every_user_once_in_order_with_gaps(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    ids = bulk_users(db, 250)
    gone = ids[::7] + ids[100:140]
    delete_ids(db, gone)
    expected = [i for i in ids if i not in gone]
    messages = stream(users, chunk_size=16)
    received = [user.id for message in messages for user in message.users]
    assert received == expected
    assert all(len(m.users) == 16 for m in messages[:-1])
    assert 1 <= len(messages[-1].users) <= 16
    assert [m.next_cursor for m in messages[:-1]] == [m.users[-1].id for m in messages[:-1]]
    assert messages[-1].next_cursor == 0


def test_stream_chunk_size_defaults_to_100_and_is_capped_at_1000(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    bulk_users(db, 1500)
    assert [len(m.users) for m in stream(users)] == [100] * 15
    assert [len(m.users) for m in stream(users, chunk_size=100_000)] == [1000, 500]


def test_stream_whose_last_chunk_is_full_still_ends_with_next_cursor_zero(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    bulk_users(db, 20)
    messages = stream(users, chunk_size=10)
    assert [len(m.users) for m in messages] == [10, 10]
    assert messages[0].next_cursor == messages[0].users[-1].id
    assert messages[1].next_cursor == 0


def test_broken_stream_resumes_from_next_cursor_without_duplicates(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    ids = bulk_users(db, 95)
    received: list[int] = []
    first = users.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=10), timeout=TIMEOUT)
    last_cursor = 0
    for index, message in enumerate(first):
        received.extend(u.id for u in message.users)
        last_cursor = message.next_cursor
        if index == 3:
            first.cancel()  # the consumer dies after four chunks
            break
    with pytest.raises(grpc.RpcError) as raised:
        next(first)
    assert raised.value.code() == grpc.StatusCode.CANCELLED
    received.extend(u.id for m in stream(users, chunk_size=10, cursor=last_cursor) for u in m.users)
    assert received == ids


def test_users_created_during_a_stream_come_once_after_the_existing_ones(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    # Large users, one per message, so flow control keeps the server far from the end of the table.
    ids = bulk_users(db, 300, pad=4000)
    responses = users.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=1), timeout=TIMEOUT)
    received = [u.id for u in next(responses).users]
    late = bulk_users(db, 5)
    received.extend(u.id for message in responses for u in message.users)
    assert received == ids + late


class _PageCounter:
    """Counts the stream pages the server reads, to see when a stream stops querying."""

    def __init__(self, read_page: Callable[..., FramedUsers]) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._read_page = read_page

    def __call__(self, store: UserStore, *args: object) -> FramedUsers:
        with self._lock:
            self.count += 1
        return self._read_page(store, *args)


@pytest.fixture
def slow_reader(server: ServerAddress) -> Iterator[users_pb2_grpc.UserServiceStub]:
    """A client whose receive window stays at 64 KiB (no BDP growth), like a consumer that lags behind."""
    with grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        yield users_pb2_grpc.UserServiceStub(channel)


@pytest.fixture
def page_counter(monkeypatch: pytest.MonkeyPatch) -> _PageCounter:
    counter = _PageCounter(UserStore.framed_page)

    def counted(store: UserStore, *args: object) -> FramedUsers:  # a function, so it binds as a method
        return counter(store, *args)

    monkeypatch.setattr(UserStore, "framed_page", counted)
    return counter


def test_cancelled_stream_stops_querying(
    slow_reader: users_pb2_grpc.UserServiceStub,
    db: peewee.Database,
    page_counter: _PageCounter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 400 users of ~4 KiB, one per message: far more than HTTP/2 flow control lets the server run ahead.
    bulk_users(db, 400, pad=4000)
    page_counter.count = 0
    caplog.set_level(logging.INFO, logger="memstore_server.access")
    responses = slow_reader.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=1), timeout=TIMEOUT)
    time.sleep(0.5)  # let the server run as far ahead as flow control allows
    for _ in range(3):
        next(responses)
    responses.cancel()

    def ended() -> bool:
        return any("ListUsersChunked CANCELLED" in r.getMessage() for r in caplog.records)

    assert wait_for(ended), "the server never saw the stream end"
    after_cancel = page_counter.count
    time.sleep(0.3)
    assert page_counter.count == after_cancel, "the server went on querying after the cancel"
    assert 3 <= after_cancel < 100, f"{after_cancel} pages were read for 3 sent"


def test_stream_past_its_deadline_stops(
    slow_reader: users_pb2_grpc.UserServiceStub, db: peewee.Database, page_counter: _PageCounter
) -> None:
    bulk_users(db, 400, pad=4000)
    page_counter.count = 0
    responses = slow_reader.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=1), timeout=0.5)
    next(responses)
    time.sleep(0.8)  # a slow consumer
    with pytest.raises(grpc.RpcError) as raised:
        for _ in responses:
            pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    settled = page_counter.count
    time.sleep(0.3)
    assert page_counter.count == settled
    assert 1 <= settled < 100


def test_chunks_of_large_users_are_split_to_fit_the_message_limit(
    db: peewee.Database, start_server: Callable[[Settings], RunningServer]
) -> None:
    limit = 1024 * 1024  # the smallest limit the server accepts
    # Users carrying nearly the largest metadata allowed: eighteen of them already pass the limit.
    ids = bulk_users(db, 60, pad=60_000)
    handle = start_server(Settings(listen="127.0.0.1:0", max_message_bytes=limit))
    # The client refuses anything larger than the server may send, as a default client would.
    with grpc.insecure_channel(
        f"127.0.0.1:{handle.port}", options=[("grpc.max_receive_message_length", limit)]
    ) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        messages = list(
            stub.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=1000), timeout=TIMEOUT)
        )
    assert len(messages) > 1
    assert all(message.ByteSize() <= limit for message in messages)
    assert [u.id for m in messages for u in m.users] == ids
    assert [m.next_cursor for m in messages[:-1]] == [m.users[-1].id for m in messages[:-1]]
    assert messages[-1].next_cursor == 0
