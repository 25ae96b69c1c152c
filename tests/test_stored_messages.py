"""The stored serialized users never go stale: after every kind of change they equal a fresh build."""

from __future__ import annotations

import threading

import peewee
from google.protobuf import field_mask_pb2
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_server.store import user_messages
from memstore_server.store.rows import USER_COLUMNS

from tests.support import TIMEOUT, struct, unique


def assert_fresh(db: peewee.Database, user_id: str) -> users_pb2.User:
    """The stored bytes equal the bytes built from the row's columns right now; returns the user."""
    with db.connection_context():
        stored, *columns = db.execute_sql(
            f"SELECT message, {USER_COLUMNS} FROM users WHERE user_id = %s", (user_id,)
        ).fetchone()
    assert stored is not None
    assert bytes(stored) == user_messages.serialize(columns)
    return users_pb2.User.FromString(bytes(stored))


def test_every_kind_of_change_stores_fresh_bytes(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    user_id = unique("fresh")
    users.CreateUser(
        users_pb2.CreateUserRequest(user_id=user_id, email="a@example.com", metadata=struct({"a": {"b": 1}})),
        timeout=TIMEOUT,
    )
    assert_fresh(db, user_id)
    changes = [
        users_pb2.UpdateUserRequest(user_id=user_id, first_name="Ann"),
        users_pb2.UpdateUserRequest(user_id=user_id, email=""),
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"a": {"c": 2}, "z": [1, None, "x"]})),
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"a": None})),
        users_pb2.UpdateUserRequest(
            user_id=user_id,
            metadata=struct({"only": True}),
            last_name="L",
            update_mask=field_mask_pb2.FieldMask(paths=["metadata", "last_name"]),
        ),
    ]
    for change in changes:
        returned = users.UpdateUser(change, timeout=TIMEOUT).user
        assert assert_fresh(db, user_id) == returned
    session_ids = [unique("s") for _ in range(3)]
    for session_id in session_ids:
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id), timeout=TIMEOUT
        )
        assert_fresh(db, user_id)
    sessions.DeleteSession(sessions_pb2.DeleteSessionRequest(session_id=session_ids[0]), timeout=TIMEOUT)
    final = assert_fresh(db, user_id)
    assert final.session_count == 2
    assert users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user == final


def test_batch_created_users_store_fresh_bytes(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    prefix = unique("batchfresh")
    existing = users.CreateUser(
        users_pb2.CreateUserRequest(user_id=f"{prefix}-0", metadata=struct({"old": 1})), timeout=TIMEOUT
    ).user
    requests = [
        users_pb2.CreateUserRequest(
            user_id=f"{prefix}-{n}", email=f"b{n}@example.com", metadata=struct({"n": n, "l": [n, None]})
        )
        for n in range(50)
    ]
    created = users.BatchCreateUsers(
        users_pb2.BatchCreateUsersRequest(requests=requests, skip_existing=True), timeout=TIMEOUT
    ).users
    assert len(created) == 49
    for user in created:
        assert assert_fresh(db, user.user_id) == user
    assert assert_fresh(db, existing.user_id) == existing
    # Later changes to batch-created users keep them fresh as well.
    sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=unique("s"), user_id=created[0].user_id), timeout=TIMEOUT
    )
    assert assert_fresh(db, created[0].user_id).session_count == 1


def test_concurrent_changes_leave_fresh_bytes(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    user_id = unique("racy")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)

    def merge(index: int) -> None:
        users.UpdateUser(
            users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({f"k{index}": index})),
            timeout=TIMEOUT,
        )

    def add_session(index: int) -> None:
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=unique(f"s{index}"), user_id=user_id),
            timeout=TIMEOUT,
        )

    threads = [threading.Thread(target=merge, args=(i,)) for i in range(10)]
    threads += [threading.Thread(target=add_session, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    user = assert_fresh(db, user_id)
    assert user.session_count == 10
    assert set(user.metadata.fields) == {f"k{i}" for i in range(10)}


def test_a_user_without_stored_bytes_is_still_served_and_refill_restores_them(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    user_id = unique("bare")
    created = users.CreateUser(
        users_pb2.CreateUserRequest(user_id=user_id, metadata=struct({"k": "v"})), timeout=TIMEOUT
    ).user
    with db.connection_context():
        db.execute_sql("UPDATE users SET message = NULL WHERE user_id = %s", (user_id,))
    assert users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user == created
    listed = users.ListUsers(
        users_pb2.ListUsersRequest(cursor=created.id - 1, limit=1), timeout=TIMEOUT
    ).users
    assert list(listed) == [created]
    streamed = users.ListUsersChunked(
        users_pb2.ListUsersChunkedRequest(cursor=created.id - 1, chunk_size=10), timeout=TIMEOUT
    )
    assert [user for chunk in streamed for user in chunk.users][:1] == [created]
    with db.connection_context(), db.atomic():
        assert user_messages.refill(db) >= 1
    assert assert_fresh(db, user_id) == created
