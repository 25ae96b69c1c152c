"""WatchUsers over the wire: a snapshot, then every change, resumable from any token.

A server of its own with a short heartbeat; streams are read by a background thread
into a queue (Watcher) so a test waits for conditions, never for time.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import peewee
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_server import resume_tokens
from memstore_server.blocking import Blocking
from memstore_server.config import Settings
from memstore_server.database import open_database
from memstore_server.feed import ChangeFeed
from memstore_server.store.changes import ChangeStore, Position, Snapshot
from memstore_server.stream_memory import StreamMemory
from memstore_server.timeouts import timeout

from tests.support import RunningServer, bulk_users, details_of, unique, wait_for

EXISTING = users_pb2.UserEvent.TYPE_EXISTING
CREATED = users_pb2.UserEvent.TYPE_CREATED
UPDATED = users_pb2.UserEvent.TYPE_UPDATED
DELETED = users_pb2.UserEvent.TYPE_DELETED
HEARTBEAT = 0.5
# Generous: the machine may be loaded.
WAIT = 60.0
API_KEY = "watch-key"


@pytest.fixture(scope="module")
def watch_server(db: peewee.Database) -> Iterator[RunningServer]:
    running = RunningServer(Settings(listen="127.0.0.1:0", watch_heartbeat=HEARTBEAT, db_pool_size=8), db)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(watch_server: RunningServer) -> Iterator[users_pb2_grpc.UserServiceStub]:
    with grpc.insecure_channel(watch_server.target) as channel:
        yield users_pb2_grpc.UserServiceStub(channel)


@pytest.fixture(scope="module")
def session_stub(watch_server: RunningServer) -> Iterator[sessions_pb2_grpc.SessionServiceStub]:
    with grpc.insecure_channel(watch_server.target) as channel:
        yield sessions_pb2_grpc.SessionServiceStub(channel)


class Watcher:
    """A WatchUsers stream read on a thread: its messages in a queue, and every one kept."""

    def __init__(self, stub: users_pb2_grpc.UserServiceStub, **request: Any) -> None:
        self.call = stub.WatchUsers(users_pb2.WatchUsersRequest(**request), timeout=600)
        self.messages: list[users_pb2.WatchUsersResponse] = []
        self.error: grpc.RpcError | None = None
        self._queue: queue.Queue[users_pb2.WatchUsersResponse | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.messages.append(message)
                self._queue.put(message)
        except grpc.RpcError as error:
            self.error = error
        self._queue.put(None)

    def next(self) -> users_pb2.WatchUsersResponse:
        message = self._queue.get(timeout=WAIT)
        assert message is not None, f"the stream ended: {self.error!r}"
        return message

    def events_until(self, done: Callable[[list[users_pb2.UserEvent]], bool]) -> list[users_pb2.UserEvent]:
        """Every event received (from the start) once ``done`` holds for them."""
        assert wait_for(lambda: done(self.events()), WAIT), (self.error, self.events()[-5:])
        return self.events()

    def events(self) -> list[users_pb2.UserEvent]:
        return [event for message in list(self.messages) for event in message.events]

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(WAIT)


@pytest.fixture
def watch(stub: users_pb2_grpc.UserServiceStub) -> Iterator[Callable[..., Watcher]]:
    opened: list[Watcher] = []

    def start(**request: Any) -> Watcher:
        opened.append(Watcher(stub, **request))
        return opened[-1]

    yield start
    for watcher in opened:
        watcher.close()


def of_user(events: list[users_pb2.UserEvent], user_id: str) -> list[users_pb2.UserEvent]:
    return [event for event in events if event.user.user_id == user_id]


def has(user_id: str, count: int) -> Callable[[list[users_pb2.UserEvent]], bool]:
    return lambda events: len(of_user(events, user_id)) >= count


def covering(sequences: set[int]) -> Callable[[list[users_pb2.UserEvent]], bool]:
    return lambda events: sequences <= {event.sequence for event in events}


def all_users(stub: users_pb2_grpc.UserServiceStub) -> dict[str, users_pb2.User]:
    found, cursor = {}, 0
    while True:
        page = stub.ListUsers(users_pb2.ListUsersRequest(limit=1000, cursor=cursor), timeout=WAIT)
        found.update({user.user_id: user for user in page.users})
        if not page.next_cursor:
            return found
        cursor = page.next_cursor


def apply(state: dict[str, users_pb2.User], events: list[users_pb2.UserEvent]) -> None:
    for event in events:
        if event.type == DELETED:
            state.pop(event.user.user_id, None)
        else:
            state[event.user.user_id] = event.user


# ---------------------------------------------------------------- the stream's shape


def test_the_first_message_comes_at_once_then_each_change_is_one_event(
    stub: users_pb2_grpc.UserServiceStub, watch: Callable[..., Watcher]
) -> None:
    watcher = watch()
    first = watcher.next()
    assert not first.events
    assert first.resume_token
    assert not first.initial_complete
    user_id = unique("w")
    created = stub.CreateUser(users_pb2.CreateUserRequest(user_id=user_id, email="a@example.com")).user
    updated = stub.UpdateUser(users_pb2.UpdateUserRequest(user_id=user_id, first_name="Ann")).user
    stub.DeleteUser(users_pb2.DeleteUserRequest(user_id=user_id))
    events = of_user(watcher.events_until(has(user_id, 3)), user_id)
    assert [event.type for event in events] == [CREATED, UPDATED, DELETED]
    assert [event.user for event in events[:2]] == [created, updated]
    assert (events[2].user.uuid, events[2].user.id) == (created.uuid, created.id)
    assert events[0].sequence < events[1].sequence < events[2].sequence
    assert all(event.commit_time.ToMicroseconds() > 0 for event in events)
    assert events[0].commit_time.ToDatetime() >= created.created_at.ToDatetime()


def test_sessions_move_the_count_and_deleting_a_user_with_sessions_is_one_event(
    stub: users_pb2_grpc.UserServiceStub,
    session_stub: sessions_pb2_grpc.SessionServiceStub,
    watch: Callable[..., Watcher],
) -> None:
    user_id = unique("w")
    stub.CreateUser(users_pb2.CreateUserRequest(user_id=user_id))
    watcher = watch()
    watcher.next()
    session_ids = [unique("s") for _ in range(3)]
    for session_id in session_ids:
        session_stub.CreateSession(sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id))
    session_stub.DeleteSession(sessions_pb2.DeleteSessionRequest(session_id=session_ids[0]))
    stub.DeleteUser(users_pb2.DeleteUserRequest(user_id=user_id))
    events = of_user(watcher.events_until(has(user_id, 5)), user_id)
    assert [event.type for event in events] == [UPDATED] * 4 + [DELETED]
    assert [event.user.session_count for event in events] == [1, 2, 3, 2, 2]


def test_a_recreated_user_id_is_created_again_with_a_new_uuid(
    stub: users_pb2_grpc.UserServiceStub, watch: Callable[..., Watcher]
) -> None:
    user_id = unique("w")
    first = stub.CreateUser(users_pb2.CreateUserRequest(user_id=user_id)).user
    watcher = watch()
    watcher.next()
    stub.DeleteUser(users_pb2.DeleteUserRequest(user_id=user_id))
    second = stub.CreateUser(users_pb2.CreateUserRequest(user_id=user_id)).user
    events = of_user(watcher.events_until(has(user_id, 2)), user_id)
    assert [(event.type, event.user.uuid) for event in events] == [
        (DELETED, first.uuid),
        (CREATED, second.uuid),
    ]
    assert second.uuid != first.uuid


def test_heartbeats_carry_fresh_tokens_while_nothing_changes(
    stub: users_pb2_grpc.UserServiceStub, watch: Callable[..., Watcher]
) -> None:
    watcher = watch()
    messages = [watcher.next() for _ in range(4)]
    assert all(not message.events and message.resume_token for message in messages)
    # A heartbeat's token resumes from where it was sent.
    user_id = unique("w")
    stub.CreateUser(users_pb2.CreateUserRequest(user_id=user_id))
    resumed = watch(resume_token=messages[-1].resume_token)
    assert [event.type for event in of_user(resumed.events_until(has(user_id, 1)), user_id)] == [CREATED]


def test_send_initial_lists_every_user_then_says_so_then_streams_changes(
    stub: users_pb2_grpc.UserServiceStub, db: peewee.Database, watch: Callable[..., Watcher]
) -> None:
    bulk_users(db, 2100)  # more than two messages' worth; stored without their bytes
    listed_before = all_users(stub)
    watcher = watch(send_initial=True)
    first = watcher.next()
    assert not first.events
    snapshot: list[users_pb2.UserEvent] = []
    while True:
        message = watcher.next()
        if message.initial_complete:
            assert not message.events
            break
        assert 1 <= len(message.events) <= 1000
        snapshot += message.events
    assert all(event.type == EXISTING and event.sequence == 0 for event in snapshot)
    ids = [event.user.id for event in snapshot]
    assert ids == sorted(ids)
    assert set(listed_before) <= {event.user.user_id for event in snapshot}
    user_id = unique("after")
    stub.CreateUser(users_pb2.CreateUserRequest(user_id=user_id))
    assert [event.type for event in of_user(watcher.events_until(has(user_id, 1)), user_id)] == [CREATED]
    assert sum(message.initial_complete for message in watcher.messages) == 1


def test_snapshot_then_changes_under_concurrent_writers_ends_as_list_users(
    stub: users_pb2_grpc.UserServiceStub, watch: Callable[..., Watcher]
) -> None:
    prefix = unique("mix")
    for i in range(50):
        stub.CreateUser(users_pb2.CreateUserRequest(user_id=f"{prefix}-{i}"))
    stop = threading.Event()

    def write(worker: int) -> int:
        done = 0
        while not stop.is_set() or done < 20:
            user_id = f"{prefix}-{(worker * 7 + done) % 60}"
            try:
                if done % 5 == 4:
                    stub.DeleteUser(users_pb2.DeleteUserRequest(user_id=user_id), timeout=WAIT)
                elif done % 3 == 0:
                    stub.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=WAIT)
                else:
                    stub.UpdateUser(
                        users_pb2.UpdateUserRequest(user_id=user_id, first_name=f"{worker}-{done}"),
                        timeout=WAIT,
                    )
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS):
                    raise
            done += 1
        return done

    with ThreadPoolExecutor(max_workers=4) as pool:
        writers = [pool.submit(write, worker) for worker in range(4)]
        watcher = watch(send_initial=True)
        while not watcher.next().initial_complete:
            pass
        stop.set()
        for writer in writers:
            writer.result(WAIT)
    marker = unique("marker")  # committed after every write: once it arrives, all have
    stub.CreateUser(users_pb2.CreateUserRequest(user_id=marker))
    events = watcher.events_until(has(marker, 1))
    state: dict[str, users_pb2.User] = {}
    apply(state, events)
    expected = {k: v for k, v in all_users(stub).items() if k.startswith(prefix)}
    assert {k: v for k, v in state.items() if k.startswith(prefix)} == expected
    last: dict[str, int] = {}
    for event in events:  # one user's sequences never decrease
        if event.type != EXISTING:
            assert event.sequence >= last.get(event.user.user_id, 0)
            last[event.user.user_id] = event.sequence


def test_one_users_changes_arrive_in_commit_order_under_concurrency(
    stub: users_pb2_grpc.UserServiceStub, watch: Callable[..., Watcher]
) -> None:
    user_ids = [unique("order") for _ in range(3)]
    for user_id in user_ids:
        stub.CreateUser(users_pb2.CreateUserRequest(user_id=user_id))
    watcher = watch()
    watcher.next()

    def bump(worker: int) -> None:
        for step in range(15):
            for user_id in user_ids:
                stub.UpdateUser(
                    users_pb2.UpdateUserRequest(
                        user_id=user_id, metadata=None, first_name=f"{worker}.{step}"
                    ),
                    timeout=WAIT,
                )

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(bump, range(6)))
    for user_id in user_ids:
        events = of_user(watcher.events_until(has(user_id, 90)), user_id)
        # updated_at moves forward on every update, so commit order is updated_at order.
        stamps = [event.user.updated_at.ToMicroseconds() for event in events]
        assert stamps == sorted(stamps)
        assert len(set(stamps)) == len(stamps) == 90
        assert events[-1].user == stub.GetUser(users_pb2.GetUserRequest(user_id=user_id)).user


# ---------------------------------------------------------------- resuming


def test_every_token_of_a_stream_resumes_with_every_later_change(
    stub: users_pb2_grpc.UserServiceStub, db: peewee.Database, watch: Callable[..., Watcher]
) -> None:
    """Tokens of the first message, of the snapshot, of initial_complete, of heartbeats,
    of events, and of a message inside a window read in pages (one transaction of 2,500)."""
    original = watch(send_initial=True)
    while not original.next().initial_complete:
        pass
    bulk_users(db, 2500)
    user_id = unique("tail")
    stub.CreateUser(users_pb2.CreateUserRequest(user_id=user_id))
    original.events_until(has(user_id, 1))
    messages = list(original.messages)
    assert any(len(m.events) == 1000 for m in messages)  # the large window came in pages
    after: list[set[int]] = []  # sequences of the change events after each message
    for index in range(len(messages)):
        after.append({e.sequence for m in messages[index + 1 :] for e in m.events if e.type != EXISTING})
    checked = 0
    for index, message in enumerate(messages):
        if index % 3 and len(message.events) != 1000 and index != len(messages) - 1:
            continue  # a sample: every third, every page of the window, the last
        resumed = watch(resume_token=message.resume_token)
        assert resumed.next().resume_token
        got = resumed.events_until(covering(after[index]))
        assert all(event.type != EXISTING for event in got)
        resumed.close()
        checked += 1
    assert checked >= 4


def test_a_token_older_than_the_retention_is_expired(
    stub: users_pb2_grpc.UserServiceStub, db: peewee.Database, watch: Callable[..., Watcher]
) -> None:
    watcher = watch()
    old_token = watcher.next().resume_token
    watcher.close()
    stub.CreateUser(users_pb2.CreateUserRequest(user_id=unique("pruned")))
    assert wait_for(lambda: ChangeStore(db).prune(0, batch=1000) > 0 or pruned_past(db, old_token), WAIT)
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(stub.WatchUsers(users_pb2.WatchUsersRequest(resume_token=old_token), timeout=WAIT)))
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "RESUME_TOKEN_EXPIRED"


def pruned_past(db: peewee.Database, token: str) -> bool:
    state = ChangeStore(db).state()
    return state.pruned_below > resume_tokens.decode(state.feed_id, token).seen.xmin


def _bad_tokens(feed_id: str) -> list[str]:
    def encoded(message: users_pb2.WatchUsersResumeToken) -> str:
        return base64.urlsafe_b64encode(message.SerializeToString()).rstrip(b"=").decode()

    good_seen = users_pb2.WatchUsersResumeToken.Snapshot(xmin=10, xmax=12)
    return [
        "not base64!",
        "////",
        base64.urlsafe_b64encode(b"\xff\xff\xff").decode(),
        encoded(users_pb2.WatchUsersResumeToken(after_sequence=1)),
        encoded(users_pb2.WatchUsersResumeToken(feed_id=feed_id)),
        resume_tokens.encode("00000000-0000-0000-0000-000000000000", Position(Snapshot(10, 12))),
        encoded(
            users_pb2.WatchUsersResumeToken(
                feed_id=feed_id, seen=users_pb2.WatchUsersResumeToken.Snapshot(xmin=12, xmax=10)
            )
        ),
        encoded(
            users_pb2.WatchUsersResumeToken(
                feed_id=feed_id, seen=users_pb2.WatchUsersResumeToken.Snapshot(xmin=10, xmax=12, xip=[13])
            )
        ),
        encoded(users_pb2.WatchUsersResumeToken(feed_id=feed_id, seen=good_seen, after_sequence=5)),
        resume_tokens.encode(feed_id, Position(Snapshot(10, 12), Snapshot(5, 6), 3)),
        resume_tokens.encode(feed_id, Position(Snapshot(2**62, 2**62 + 1))),  # from the future
        "A" * (resume_tokens.MAX_TOKEN_CHARS + 1),
    ]


def expect_invalid_token(stub: users_pb2_grpc.UserServiceStub, token: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(stub.WatchUsers(users_pb2.WatchUsersRequest(resume_token=token), timeout=WAIT)))
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, (token, details)
    assert details.reason == "INVALID_RESUME_TOKEN"
    assert set(details.violations) == {"resume_token"}
    assert "SELECT" not in details.message


def test_malformed_and_foreign_tokens_are_invalid_argument(
    stub: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    feed_id = ChangeStore(db).state().feed_id
    for token in _bad_tokens(feed_id):
        expect_invalid_token(stub, token)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=200))
def test_arbitrary_bytes_as_a_token_never_break_the_server(
    stub: users_pb2_grpc.UserServiceStub, raw: bytes
) -> None:
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    try:
        next(iter(stub.WatchUsers(users_pb2.WatchUsersRequest(resume_token=token), timeout=WAIT)))
    except grpc.RpcError as error:
        details = details_of(error)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.reason == "INVALID_RESUME_TOKEN"
    else:  # only a token that happens to be a real one of this feed could be accepted
        raise AssertionError(f"accepted {raw!r}")


# ---------------------------------------------------------------- resources


def test_a_watcher_cancelled_mid_stream_frees_its_place(db: peewee.Database) -> None:
    server = RunningServer(
        Settings(listen="127.0.0.1:0", watch_heartbeat=HEARTBEAT, max_concurrent_streams=1, db_pool_size=4),
        db,
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = users_pb2_grpc.UserServiceStub(channel)
            first = Watcher(stub, send_initial=True)
            first.next()
            assert wait_for(lambda: server.handle.streams.open == 1, WAIT)
            with pytest.raises(grpc.RpcError) as raised:
                next(iter(stub.WatchUsers(users_pb2.WatchUsersRequest(), timeout=WAIT)))
            assert details_of(raised.value).reason == "TOO_MANY_STREAMS"
            first.close()
            assert wait_for(lambda: server.handle.streams.open == 0, WAIT)
            second = Watcher(stub)
            assert second.next().resume_token
            second.close()
    finally:
        server.stop()


def test_a_watcher_that_reads_nothing_is_cancelled_and_frees_its_place(
    db: peewee.Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="memstore_server.streams")
    server = RunningServer(
        Settings(
            listen="127.0.0.1:0",
            watch_heartbeat=HEARTBEAT,
            stream_stall_timeout=1.0,
            max_concurrent_streams=1,
            db_pool_size=4,
        ),
        db,
    )
    # No BDP probing: the window stays at its initial 64 KiB, which the changes below overfill.
    channel = grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)])
    try:
        stalled = users_pb2_grpc.UserServiceStub(channel).WatchUsers(
            users_pb2.WatchUsersRequest(), timeout=120
        )  # never read
        assert wait_for(lambda: server.handle.streams.open == 1, WAIT)
        bulk_users(db, 200, pad=4000)  # about 800 KiB of events

        def warned() -> bool:
            return any(
                "WatchUsers" in r.getMessage() and "read nothing" in r.getMessage() for r in caplog.records
            )

        assert wait_for(warned, WAIT), [r.getMessage() for r in caplog.records]
        assert wait_for(lambda: server.handle.streams.open == 0, WAIT)
        stalled.cancel()
        with grpc.insecure_channel(server.target) as reading:
            watcher = Watcher(users_pb2_grpc.UserServiceStub(reading))
            assert watcher.next().resume_token  # the freed place serves a reader
            watcher.close()
    finally:
        channel.close()
        server.stop()


def test_a_hundred_idle_watchers_leave_get_user_answering(
    stub: users_pb2_grpc.UserServiceStub, watch_server: RunningServer, watch: Callable[..., Watcher]
) -> None:
    user_id = unique("idle")
    stub.CreateUser(users_pb2.CreateUserRequest(user_id=user_id))
    open_before = watch_server.handle.streams.open
    watchers = [watch() for _ in range(100)]
    for watcher in watchers:
        watcher.next()
    assert watch_server.handle.streams.open == open_before + 100
    for _ in range(20):
        assert stub.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=WAIT).user.user_id == user_id
    stub.UpdateUser(users_pb2.UpdateUserRequest(user_id=user_id, first_name="seen by all"))
    for watcher in watchers:
        assert [e.user.first_name for e in of_user(watcher.events_until(has(user_id, 1)), user_id)] == [
            "seen by all"
        ]


def test_watching_needs_credentials_when_auth_is_on(db: peewee.Database) -> None:
    server = RunningServer(Settings(listen="127.0.0.1:0", api_keys=(API_KEY,), db_pool_size=4), db)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = users_pb2_grpc.UserServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                next(iter(stub.WatchUsers(users_pb2.WatchUsersRequest(), timeout=WAIT)))
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            call = stub.WatchUsers(
                users_pb2.WatchUsersRequest(),
                timeout=WAIT,
                metadata=(("authorization", f"Bearer {API_KEY}"),),
            )
            assert next(iter(call)).resume_token
            call.cancel()
    finally:
        server.stop()


def test_watching_without_a_database_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    db = open_database(f"postgresql://memstore@127.0.0.1:{closed_port}/memstore", pool_size=2, pool_timeout=1)
    server = RunningServer(Settings(listen="127.0.0.1:0", db_pool_size=2), db, database_health=False)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = users_pb2_grpc.UserServiceStub(channel)
            for request in (users_pb2.WatchUsersRequest(), users_pb2.WatchUsersRequest(send_initial=True)):
                with pytest.raises(grpc.RpcError) as raised:
                    next(iter(stub.WatchUsers(request, timeout=WAIT)))
                details = details_of(raised.value)
                assert details.code == grpc.StatusCode.UNAVAILABLE
                assert details.reason == "DATABASE_UNAVAILABLE"
    finally:
        server.stop()


def test_the_feed_stops_when_a_wake_up_comes_in_the_same_turn_as_the_stop(db: peewee.Database) -> None:
    """A wake-up arriving with stop() must not keep the reader running: asyncio.wait_for
    returned the wake-up and lost the cancellation, and shutting down hung for good."""

    async def wake_up_then_stop() -> None:
        blocking = Blocking(threads=2, queue_timeout=10, stream_memory=StreamMemory(1 << 20, admissions=1))
        feed = ChangeFeed(ChangeStore(db), blocking, heartbeat=5.0, retention=3600.0, listen=False)
        try:
            async with feed.watching():
                await feed.fresh_head()  # the reader has read, and waits for its next tick
                feed._wake_up()  # what the LISTEN connection calls on a NOTIFY
                async with timeout(10):  # a stop takes milliseconds; it hung forever
                    await feed.stop()
        finally:
            blocking.shutdown()

    for _ in range(3):
        asyncio.run(wake_up_then_stop())
