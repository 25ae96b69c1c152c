"""client.user.watch, sync and async: snapshot then changes, errors, and resuming by itself
after the server goes away (from its last token, so changes made meanwhile still come)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import peewee
import pytest
from memstore.v1 import users_pb2
from memstore_client import (
    AsyncMemstoreClient,
    CreateUserRequest,
    InvalidArgumentError,
    MemstoreClient,
    ResumePolicy,
    UpdateUserRequest,
    User,
    WatchUsersResponse,
)
from memstore_client._watching import WatchCursor
from memstore_server.config import Settings
from memstore_server.store.users import UserStore
from memstore_server.validation import Metadata

from tests.support import RunningServer, free_port, unique

PATIENT = ResumePolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.5)


@pytest.fixture
def restartable(db: peewee.Database) -> Iterator[list[RunningServer]]:
    """Servers on one fixed port; the test stops one and starts the next. All are stopped afterwards."""
    handles: list[RunningServer] = []
    yield handles
    for handle in handles:
        handle.stop()


def _start(db: peewee.Database, port: int) -> RunningServer:
    return RunningServer(Settings(listen=f"127.0.0.1:{port}", watch_heartbeat=0.5, db_pool_size=4), db)


def test_watch_gives_the_snapshot_then_changes_as_plain_python(client: MemstoreClient) -> None:
    existing = client.user.add(CreateUserRequest(user_id=unique("before")))
    stream = client.user.watch(send_initial=True)
    first = next(stream)
    assert isinstance(first, WatchUsersResponse)
    assert first.resume_token
    assert not first.events
    listed: list[User] = []
    for message in stream:
        if message.initial_complete:
            break
        listed += [event.user for event in message.events if event.type == "EXISTING"]
    assert existing in listed
    user_id = unique("after")
    created = client.user.add(CreateUserRequest(user_id=user_id, metadata={"n": 1}))
    for message in stream:
        found = [event for event in message.events if event.user.user_id == user_id]
        if found:
            assert [(event.type, event.user) for event in found] == [("CREATED", created)]
            assert found[0].commit_time.tzinfo is not None
            assert found[0].sequence > 0
            break
    stream.close()


def test_a_bad_token_is_the_clients_invalid_argument_error(client: MemstoreClient) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        next(client.user.watch(resume_token="not-a-token"))
    assert raised.value.reason == "INVALID_RESUME_TOKEN"


def test_a_watch_resumes_by_itself_after_the_server_goes_away(
    db: peewee.Database, restartable: list[RunningServer]
) -> None:
    port = free_port()
    restartable.append(_start(db, port))
    store = UserStore(db)
    during = unique("during")  # made while no server runs: only the resumed stream can bring it
    after = unique("after")
    with MemstoreClient(f"127.0.0.1:{port}", resume=PATIENT) as client:
        stream = client.user.watch()
        next(stream)
        before = unique("before")
        client.user.add(CreateUserRequest(user_id=before))
        seen: list[tuple[str, str]] = []
        for message in stream:
            seen += [(event.type, event.user.user_id) for event in message.events]
            if ("CREATED", before) in seen:
                break
        restartable[0].stop(0)
        store.create(during, "", "", "", Metadata({}, "{}"))
        restarted = threading.Event()

        def restart() -> None:
            restartable.append(_start(db, port))
            client.user.update(UpdateUserRequest(user_id=during, first_name="again"))
            client.user.add(CreateUserRequest(user_id=after))
            restarted.set()

        threading.Thread(target=restart).start()
        for message in stream:
            seen += [(event.type, event.user.user_id) for event in message.events]
            if ("CREATED", after) in seen:
                break
        stream.close()
    assert restarted.wait(30)
    assert [kind for kind, user_id in seen if user_id == during] == ["CREATED", "UPDATED"]


@pytest.mark.asyncio
async def test_the_async_watch_resumes_too(db: peewee.Database, restartable: list[RunningServer]) -> None:
    port = free_port()
    restartable.append(_start(db, port))
    during, after = unique("during"), unique("after")
    async with AsyncMemstoreClient(f"127.0.0.1:{port}", resume=PATIENT) as client:
        stream = client.user.watch(send_initial=True)
        seen: list[tuple[str, str]] = []
        async for message in stream:
            if message.initial_complete:
                break
        restartable[0].stop(0)
        UserStore(db).create(during, "", "", "", Metadata({}, "{}"))
        restartable.append(_start(db, port))
        await client.user.add(CreateUserRequest(user_id=after))
        async for message in stream:
            seen += [(event.type, event.user.user_id) for event in message.events]
            if ("CREATED", after) in seen:
                break
        await stream.aclose()
    assert ("CREATED", during) in seen


def _message(token: str, *, initial_complete: bool = False) -> users_pb2.WatchUsersResponse:
    return users_pb2.WatchUsersResponse(resume_token=token, initial_complete=initial_complete)


def test_where_a_broken_watch_resumes() -> None:
    """From the last token; but a snapshot broken midway is taken again, and says so."""
    plain = WatchCursor("", send_initial=False)
    assert plain.request() == users_pb2.WatchUsersRequest()
    plain.received(_message("t1"))
    assert plain.request() == users_pb2.WatchUsersRequest(resume_token="t1")

    given = WatchCursor("t0", send_initial=True)  # a token wins: no snapshot
    assert given.request() == users_pb2.WatchUsersRequest(resume_token="t0")

    snapshot = WatchCursor("", send_initial=True)
    assert snapshot.request() == users_pb2.WatchUsersRequest(send_initial=True)
    assert not snapshot.received(_message("s0")).snapshot_restarted
    assert snapshot.request() == users_pb2.WatchUsersRequest(send_initial=True)  # broken midway
    assert snapshot.received(_message("s1")).snapshot_restarted
    assert not snapshot.received(_message("s1", initial_complete=True)).snapshot_restarted
    assert snapshot.request() == users_pb2.WatchUsersRequest(resume_token="s1")
    snapshot.received(_message("s2"))
    assert snapshot.request() == users_pb2.WatchUsersRequest(resume_token="s2")
